"""Build hook (hatchling): compiles the optional native paths, capture_export/export/_cbor_json.c: JSON Lines
written straight from the stored CBOR, Parquet's typed columns and capture, and privacy mode's scrub.

With a C compiler the wheel carries the extension (and is tagged for this Python and platform); an editable
install (``pip install -e .``) gets it built in place beside the C file, where the installed path finds it.
Without one (or with ``CAPTURE_EXPORT_PURE_PYTHON=1``) the build says so and goes on: the package is pure
Python and JSON Lines, Parquet and privacy mode take their Python path (export/batch.py). The compiler is the
one Python was built with (``sysconfig``), or ``$CC`` as distutils would take it; ``$CFLAGS`` is added.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sysconfig
import tempfile
from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGE_DIR = Path("capture_export") / "export"
SOURCE = Path("operator") / PACKAGE_DIR / "_cbor_json.c"


def _compile(root: Path, target: Path) -> str | None:
    """Build the extension at ``target``; None when done, else why not."""
    default_cc = sysconfig.get_config_var("CC")
    ldshared = sysconfig.get_config_var("LDSHARED")
    if not default_cc or not ldshared:
        return "this Python has no C compiler configuration (sysconfig CC/LDSHARED)"
    cc = os.environ.get("CC", default_cc)
    if "LDSHARED" not in os.environ and ldshared.startswith(default_cc):
        ldshared = cc + ldshared[len(default_cc):]  # distutils' rule: $CC links too
    source = root / SOURCE
    digest = hashlib.sha256(source.read_bytes()).hexdigest()
    flags = [*shlex.split(sysconfig.get_config_var("CFLAGS") or ""), *shlex.split(os.environ.get("CFLAGS", "")),
             *shlex.split(sysconfig.get_config_var("CCSHARED") or ""), f"-I{sysconfig.get_paths()['include']}",
             f'-DCBOR_JSON_SOURCE_SHA256="{digest}"']
    with tempfile.TemporaryDirectory(prefix="cbor-json-") as work:
        obj = Path(work) / "_cbor_json.o"
        steps = [[*shlex.split(cc), *flags, "-c", str(source), "-o", str(obj)],
                 [*shlex.split(ldshared), str(obj), "-lm", "-o", str(target)]]
        for step in steps:
            try:
                done = subprocess.run(step, capture_output=True, text=True, check=False)
            except OSError as exc:
                return f"{step[0]}: {exc}"
            if done.returncode != 0:
                return f"{shlex.join(step)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-400:]}"
    return None


class NativePathsHook(BuildHookInterface):
    PLUGIN_NAME = "custom"
    _work: str | None = None

    def finalize(self, version: str, build_data: dict[str, Any], artifact_path: str) -> None:
        if self._work is not None:
            shutil.rmtree(self._work, ignore_errors=True)

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel":
            return
        if os.environ.get("CAPTURE_EXPORT_PURE_PYTHON"):
            self.app.display_info("capture-export: CAPTURE_EXPORT_PURE_PYTHON set, the native paths (JSON Lines, "
                                  "Parquet's columns, privacy mode) are not built")
            return
        root = Path(self.root)
        name = "_cbor_json" + sysconfig.get_config_var("EXT_SUFFIX")
        if version == "editable":
            target = root / "operator" / PACKAGE_DIR / name  # found through the editable install's path
        else:
            self._work = tempfile.mkdtemp(prefix="capture-export-native-")
            target = Path(self._work) / name
        problem = _compile(root, target)
        if problem is not None:
            target.unlink(missing_ok=True)  # never an extension of an older source
            self.app.display_warning(f"capture-export: the native paths (JSON Lines, Parquet's columns, "
                                     f"privacy mode) are not built, all take the Python path (same bytes, "
                                     f"slower): {problem}")
            return
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
        if version != "editable":
            build_data["force_include"][str(target)] = str(PACKAGE_DIR / name)
