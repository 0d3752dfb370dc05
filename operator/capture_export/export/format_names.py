"""The names of the formats: each ``spec.format`` value, the ``spec.compression`` values it takes and its
default compression. This is the part of the format registry (formats.py) the API models need for their
enums and CEL rules; it imports nothing of the package, so the API models never import the encoders (which
import the store, which imports the API's vocabulary). A new format is one entry here and its encoder and
reader in formats.py."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["COMPRESSIONS", "FORMAT_CHOICES", "FORMAT_NAMES", "FormatChoice"]


@dataclass(frozen=True)
class FormatChoice:
    """One value of ``spec.format``: ``compressions``, the values ``spec.compression`` may take with it,
    and ``default_compression`` when it is omitted."""

    name: str
    compressions: tuple[str, ...]
    default_compression: str


FORMAT_CHOICES: dict[str, FormatChoice] = {
    choice.name: choice
    for choice in (
        FormatChoice("cbor-zstd", compressions=("zstd",), default_compression="zstd"),
        FormatChoice("jsonl", compressions=("none", "gzip", "zstd"), default_compression="none"),
        FormatChoice("parquet", compressions=("none", "gzip", "zstd"), default_compression="zstd"),
    )
}
FORMAT_NAMES = tuple(FORMAT_CHOICES)
# Every compression of any format: "none" first, then by name.
COMPRESSIONS = tuple(sorted({c for choice in FORMAT_CHOICES.values() for c in choice.compressions},
                            key=lambda c: (c != "none", c)))
