"""The optional native extension (capture_export/export/_cbor_json.c) for the tests of its functions."""

from __future__ import annotations

import os
from types import ModuleType

import pytest

__all__ = ["built_extension"]


def built_extension(function: str) -> ModuleType:
    """The built extension, for tests of its ``function``: they skip where no C compiler built it, and fail
    instead under CI (``CI`` set: CI builds it) or when the built ``.so`` is of an older C file without
    ``function`` (rebuild it: ``pip install --no-deps -e .``)."""
    try:
        from capture_export.export import _cbor_json
    except ImportError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"the native extension is not built ({exc}); CI builds it (pip install -e .)", pytrace=False)
        pytest.skip(f"the native extension is not built here (no C compiler?): {exc}")
    if not hasattr(_cbor_json, function):
        pytest.fail(f"the built extension has no {function}: rebuild it (pip install --no-deps -e .)", pytrace=False)
    return _cbor_json
