"""Where things go in the bucket: the one place that knows the object-key scheme.

Data objects are named by the record-id range their batch handled, zero-padded so that keys sort in
export order, in the folder that ``pathTemplate`` gives (default ``{prefix}``):

    {prefix}/00000000000000000001-00000000000000001000.cbor.zstd
    {prefix}/2026-11-24/00000000000000000001-00000000000000001000.jsonl.gz     pathTemplate {prefix}/{date}
    {prefix}/year=2026/month=11/day=24/0000…1-0000…1000.parquet               … + hivePartitioning

A retried batch starts at the same id, and so at the same record and the same folder: it writes the same
key. The time variables are the UTC date and time of the batch's records (every record of a batch lies in
the same folder: the engine cuts a batch where the folder would change). When ``filter`` excludes records,
the name still gives the range the batch handled, so an object may hold fewer records than its range.
Empty template segments collapse, so ``{prefix}/{date}`` with no prefix is ``2026-11-24/``.

Each exporter's checkpoint lives beside the data, outside every template folder and without dates, and
so does the connection test's short-lived probe object:

    {prefix}/_capture-export/checkpoints/{namespace}/{name}.json
    {prefix}/_capture-export/probes/{namespace}/{name}
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from ..api.s3exporter import CONTROL_SEGMENT, DEFAULT_PATH_TEMPLATE, TIME_VARIABLES, parse_path_template
from .formats import DATA_EXTENSIONS, FORMATS

__all__ = [
    "ID_WIDTH",
    "ObjectLayout",
    "layouts_apart",
    "parse_range",
]

ID_WIDTH = 20  # enough digits for any 64-bit id
CONTROL_DIR = CONTROL_SEGMENT
# DATA_EXTENSIONS, every extension a data object may have, comes from the format registry (formats.py).
_RANGE = re.compile(r"(?:^|/)(\d{20})-(\d{20})\.[^/]+$")
_TIME_PATTERNS = {"date": r"\d{4}-\d{2}-\d{2}", "year": r"\d{4}", "month": r"\d{2}", "day": r"\d{2}",
                  "hour": r"\d{2}"}
_EXTENSIONS_PATTERN = "|".join(re.escape(e) for e in DATA_EXTENSIONS)
_US = 1_000_000


def parse_range(key: str) -> tuple[int, int] | None:
    """The (first, last) record ids a data key holds, or None for any other key."""
    match = _RANGE.search(key)
    if not match:
        return None
    return int(match.group(1)), int(match.group(2))


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(value: datetime) -> int:
    return (value - _EPOCH) // timedelta(microseconds=1)


def _moment(timestamp_us: int) -> datetime:
    # Integer arithmetic: a float division could round 23:59:59.999999 up into the next day.
    return _EPOCH + timedelta(microseconds=timestamp_us)


@dataclass(frozen=True)
class ObjectLayout:
    prefix: str
    namespace: str
    name: str
    extension: str = FORMATS["cbor-zstd"].extensions["zstd"]
    template: str = DEFAULT_PATH_TEMPLATE
    hive: bool = False
    _parts: list[tuple[str, bool]] = field(init=False, repr=False, compare=False)
    _unit: str | None = field(init=False, repr=False, compare=False)
    _static_dir: str | None = field(init=False, repr=False, compare=False)
    _pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parts = parse_path_template(self.template)
        used = {text for text, var in parts if var}
        unit = next((u for u in ("hour", "day", "date", "month", "year") if u in used), None)
        object.__setattr__(self, "_parts", parts)
        object.__setattr__(self, "_unit", "day" if unit == "date" else unit)
        static = None if unit else self._join("".join(self._value(t, None) if v else t for t, v in parts))
        object.__setattr__(self, "_static_dir", static)
        object.__setattr__(self, "_pattern", self._key_pattern())

    # -- folders ------------------------------------------------------------------------------------

    def _root(self) -> str:
        return f"{self.prefix}/" if self.prefix else ""

    def _value(self, variable: str, moment: datetime | None) -> str:
        if variable == "prefix":
            return self.prefix
        if variable == "exporter":
            return self.name
        if variable == "namespace":
            return self.namespace
        assert moment is not None
        value = {
            "date": f"{moment.year:04d}-{moment.month:02d}-{moment.day:02d}",
            "year": f"{moment.year:04d}",
            "month": f"{moment.month:02d}",
            "day": f"{moment.day:02d}",
            "hour": f"{moment.hour:02d}",
        }[variable]
        return f"{variable}={value}" if self.hive else value

    @staticmethod
    def _join(rendered: str) -> str:
        """Collapse empty segments (an empty prefix) and end with "/" unless empty."""
        segments = [s for s in rendered.split("/") if s]
        return "/".join(segments) + "/" if segments else ""

    @property
    def time_partitioned(self) -> bool:
        """Whether the folder depends on the records' timestamps (then batches are cut at its bounds)."""
        return self._unit is not None

    def data_dir(self, first_timestamp_us: int) -> str:
        """The folder a batch goes to (the key up to the file name); the same for every record of it."""
        if self._static_dir is not None:
            return self._static_dir
        moment = _moment(first_timestamp_us)
        return self._join("".join(self._value(text, moment) if var else text for text, var in self._parts))

    def partition_span(self, timestamp_us: int) -> tuple[int, int]:
        """``[start, end)`` in microseconds: the timestamps that share ``timestamp_us``'s folder."""
        if self._unit is None:
            return (-(2**63), 2**63)
        moment = _moment(timestamp_us)
        if self._unit == "hour":
            start = moment.replace(minute=0, second=0, microsecond=0)
            return _micros(start), _micros(start) + 3600 * _US
        if self._unit == "day":
            start = moment.replace(hour=0, minute=0, second=0, microsecond=0)
            return _micros(start), _micros(start) + 86400 * _US
        if self._unit == "month":
            start = moment.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
            end = start.replace(year=start.year + 1, month=1) if start.month == 12 else start.replace(
                month=start.month + 1)
            return _micros(start), _micros(end)
        start = moment.replace(month=1, day=1, hour=0, minute=0, second=0, microsecond=0)
        return _micros(start), _micros(start.replace(year=start.year + 1))

    # -- keys ---------------------------------------------------------------------------------------

    def data_key(self, first_id: int, last_id: int, first_timestamp_us: int) -> str:
        return f"{self.data_dir(first_timestamp_us)}{first_id:0{ID_WIDTH}d}-{last_id:0{ID_WIDTH}d}{self.extension}"

    def batch_start_marker(self, first_id: int, first_timestamp_us: int) -> str:
        """A key that sorts just before every data key whose range starts at ``first_id`` or later."""
        return f"{self.data_dir(first_timestamp_us)}{first_id:0{ID_WIDTH}d}"

    def control_root(self) -> str:
        """Where the destination's control folder lies (``{prefix}/``, or "" without a prefix)."""
        return self._root()

    def checkpoints_folder(self) -> str:
        """The folder of the checkpoints of every exporter with this prefix."""
        return f"{self._root()}{CONTROL_DIR}/checkpoints/"

    def checkpoint_key(self) -> str:
        return f"{self.checkpoints_folder()}{self.namespace}/{self.name}.json"

    def lease_key(self) -> str:
        """The lease of the data area this layout writes to (export/ownership.py): exporters whose
        templates keep them apart have leases of their own, the others share one."""
        area = quote(self.data_prefix().rstrip("/"), safe="") or "_root"
        return f"{self._root()}{CONTROL_DIR}/leases/{area}.json"

    @property
    def fully_static(self) -> bool:
        """Every data key lies directly in one folder (no time variable)."""
        return self._static_dir is not None

    def probe_key(self) -> str:
        """The connection test's probe object: written, read, listed and deleted before the first export."""
        return f"{self._root()}{CONTROL_DIR}/probes/{self.namespace}/{self.name}"

    def data_prefix(self) -> str:
        """Every data object of this exporter lies under this prefix (the template's folders up to its
        first time variable)."""
        rendered = ""
        for text, var in self._parts:
            if var and text in TIME_VARIABLES:
                break
            rendered += self._value(text, None) if var else text
        else:
            return self._join(rendered)
        cut = rendered.rfind("/")
        return self._join(rendered[: cut + 1] if cut >= 0 else "")

    def _key_pattern(self) -> re.Pattern[str]:
        pattern = ""
        for text, var in self._parts:
            if not var:
                pattern += re.escape(text)
            elif text in TIME_VARIABLES:
                pattern += (re.escape(f"{text}=") if self.hive else "") + _TIME_PATTERNS[text]
            else:
                pattern += re.escape(self._value(text, None))
        # Empty segments collapse when rendered; match the collapsed form ("/" is not a regex metachar).
        folder = self._join(pattern)
        return re.compile(rf"^{folder}\d{{{ID_WIDTH}}}-\d{{{ID_WIDTH}}}(?:{_EXTENSIONS_PATTERN})$")

    def is_data_key(self, key: str) -> bool:
        """A data object of this layout, in any format (a format may change between runs)."""
        return self._pattern.match(key) is not None


def layouts_apart(ours: ObjectLayout, other: ObjectLayout | None) -> bool:
    """Whether two exporters' data objects can never share a folder, so that neither's sweep can reach the
    other's objects. Conservative: their folders up to the first time variable must differ, and one must
    not lie inside the other unless the outer one has no time variable (its keys are its folder's direct
    children). ``{prefix}/{exporter}`` (or ``{namespace}``) before any time variable keeps exporters apart;
    dated folders alone do not. ``other`` None (a layout not recorded, a checkpoint from before version
    2): apart only when our own template names this exporter before any time variable."""
    if other is None:
        area = ours.data_prefix()
        return f"/{ours.name}/" in f"/{area}" and area != ours.control_root()
    a, b = ours.data_prefix(), other.data_prefix()
    if a == b:
        return False
    if b.startswith(a):
        return ours.fully_static
    if a.startswith(b):
        return other.fully_static
    return True
