"""What the entry points load when imported: only what every use of them needs. Each module imported is CPU
at every start: the command's, and the encode pool's fork server's, which imports the command (``__main__``)
and the batch code before it forks its workers (export/pool.py: PRELOAD). pydantic and the API models alone
cost ~0.25 s of CPU, and the fork server of a pooled format (JSON Lines, Parquet) never validates a model.

Each case runs in a fresh interpreter, since the test process has imported everything already."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

# What no import below may load, and who needs it.
HEAVY = {
    "pydantic": "the API models, for the commands that read manifests",
    "capture_export.api.common": "the API models",
    "yaml": "the manifests' reader",
    "botocore": "the object store's client",
    "kopf": "the operator's framework (`capture-export operator`)",
    "kubernetes": "the Kubernetes client (the operator)",
    "aiohttp": "the ingest server's web framework",
    "litellm": "the ingest tests' client",
    "psycopg": "the PostgreSQL store",
    "pyarrow": "Parquet's library (the fork server imports it only for a Parquet exporter)",
}

FORK_SERVER_PRELOAD = """\
import importlib
from capture_export.export.pool import FREEZE, PRELOAD
for name in [*PRELOAD, FREEZE]:
    importlib.import_module("capture_export.cli" if name == "__main__" else name)"""

ENTRY_POINTS = [
    # The console script, `python -m capture_export.cli`, and so the fork server's `__main__`: building the
    # parser needs argparse alone; each command imports what it runs.
    "import capture_export.cli",
    # The batch code, which checks, filters and encodes rows.
    "import capture_export.export.batch",
    # What the encode pool's fork server imports before it forks the workers (export/pool.py): its preload
    # list, the command standing for `__main__`.
    FORK_SERVER_PRELOAD,
    # The capture store, which the ingest server, `seed` and the batch code import: its errors name reasons
    # of the API's vocabulary, not the models.
    "import capture_export.store",
]


def loaded_by(statement: str) -> set[str]:
    program = f"import json, sys\n{statement}\nprint(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return set(json.loads(result.stdout))


@pytest.mark.parametrize("statement", ENTRY_POINTS)
def test_an_entry_point_loads_nothing_heavy_it_does_not_use(statement: str) -> None:
    loaded = loaded_by(statement)
    needless = {name: why for name, why in HEAVY.items()
                if any(module == name or module.startswith(f"{name}.") for module in loaded)}
    assert not needless, f"`{statement}` loads {needless}"
