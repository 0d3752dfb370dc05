"""Any module of the package can be the first one a process imports: a script, a benchmark or an encode
worker that starts with the format registry must not meet a half-initialised module.

Each case runs in a fresh interpreter, since the test process has imported everything already."""

from __future__ import annotations

import subprocess
import sys

import pytest

# The modules on what used to be a cycle: the format registry imports the store's record codec, the store
# imports the API's vocabulary, and the API models took their format enums from the format registry.
FIRST_IMPORTS = [
    "import capture_export.export.formats",
    "import capture_export.store.records",
    "import capture_export.store",
    "import capture_export.api.content",
    "import capture_export.api",
    # The encode pool's sizing read the registry through a workaround import of the API first.
    "from capture_export.export.pool import workers_for_memory; assert workers_for_memory(4 << 30) >= 1",
]


@pytest.mark.parametrize("statement", FIRST_IMPORTS)
def test_a_fresh_interpreter_can_import_it_first(statement: str) -> None:
    result = subprocess.run([sys.executable, "-c", statement], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
