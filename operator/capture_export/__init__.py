"""capture-export: ship LLM gateway capture records to S3 exactly once, purge only what is exported."""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
