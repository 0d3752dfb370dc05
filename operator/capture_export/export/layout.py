"""Where things go in the bucket: the one place that knows the object-key scheme.

Data objects are named by the record-id range they hold, zero-padded so that keys sort in export order:

    {prefix}/00000000000000000001-00000000000000001000.cbor.zstd

A retried batch starts at the same id and so writes the same key. Each exporter's checkpoint lives
beside the data, outside the ``.cbor.zstd`` namespace that readers consume:

    {prefix}/_capture-export/checkpoints/{namespace}/{name}.json
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ID_WIDTH", "ObjectLayout", "parse_range"]

ID_WIDTH = 20  # enough digits for any 64-bit id
CONTROL_DIR = "_capture-export"
_RANGE = re.compile(r"(?:^|/)(\d{20})-(\d{20})\.[^/]+$")


def parse_range(key: str) -> tuple[int, int] | None:
    """The (first, last) record ids a data key holds, or None for any other key."""
    match = _RANGE.search(key)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


@dataclass(frozen=True)
class ObjectLayout:
    prefix: str
    namespace: str
    name: str
    extension: str = ".cbor.zstd"

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def data_dir(self, first_timestamp_us: int) -> str:
        """The folder a batch goes to (the key up to the file name); the same for every record of it."""
        return self._root()

    def data_key(self, first_id: int, last_id: int, first_timestamp_us: int) -> str:
        return f"{self.data_dir(first_timestamp_us)}{first_id:0{ID_WIDTH}d}-{last_id:0{ID_WIDTH}d}{self.extension}"

    def batch_start_marker(self, first_id: int, first_timestamp_us: int) -> str:
        """A key that sorts just before every data key whose range starts at ``first_id`` or later."""
        return f"{self.data_dir(first_timestamp_us)}{first_id:0{ID_WIDTH}d}"

    def checkpoint_key(self) -> str:
        return f"{self._root()}{CONTROL_DIR}/checkpoints/{self.namespace}/{self.name}.json"

    def data_prefix(self) -> str:
        """Every data object of this exporter lies under this prefix."""
        return self._root()

    def is_data_key(self, key: str) -> bool:
        return key.endswith(self.extension) and f"/{CONTROL_DIR}/" not in f"/{key}" and parse_range(key) is not None
