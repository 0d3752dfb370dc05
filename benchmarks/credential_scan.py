"""What the credential rules cost per record: the ``might_hold`` pre-scan, the full check of a foreign row
(store/check.py), and the walk of a record that holds credentials (store/credentials.py).

    nice .venv/bin/python benchmarks/credential_scan.py [--count 5000] [--repeat 5]

The records are the seed generator's (``capture-export seed``); a copy of each with its headers as JSON
text (``{"request": "{\\"headers\\": …}"}``) is timed too. Prints the best of ``--repeat`` runs, in
microseconds per record, and how many records the pre-scan let through to the walk. Note ``uptime``.
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any


def _best(repeat: int, count: int, run: Callable[[], object]) -> float:
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best / count * 1e6


def _as_json_text(record: dict[str, Any]) -> dict[str, Any]:
    record = copy.deepcopy(record)
    capture = record.get("capture")
    if isinstance(capture, dict):
        record["capture"] = {k: json.dumps(v, default=str) if isinstance(v, dict) else v for k, v in capture.items()}
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--count", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()

    import cbor2

    from capture_export.seed.generator import generate_records
    from capture_export.store.check import check_foreign
    from capture_export.store.credentials import DEFAULT_POLICY

    start = datetime(2026, 11, 1, tzinfo=UTC)
    records = list(generate_records(args.count, seed=1, start=start))
    as_text = [_as_json_text(r) for r in records]
    for name, chosen in (("seed records", records), ("capture parts as JSON text", as_text)):
        bodies = [cbor2.dumps(r, timezone=UTC) for r in chosen]
        flagged = [r for r, b in zip(chosen, bodies, strict=True) if DEFAULT_POLICY.might_hold(b)]
        scan = _best(args.repeat, len(bodies), lambda bodies=bodies: [DEFAULT_POLICY.might_hold(b) for b in bodies])
        check = _best(args.repeat, len(bodies),
                      lambda bodies=bodies: [check_foreign(i, b) for i, b in enumerate(bodies)])
        walk = (_best(args.repeat, len(flagged), lambda flagged=flagged: [DEFAULT_POLICY.strip(copy.deepcopy(r))
                                                                        for r in flagged])
                - _best(args.repeat, len(flagged), lambda flagged=flagged: [copy.deepcopy(r) for r in flagged])
                if flagged else 0.0)
        print(f"{name}: {len(bodies)} records, {len(flagged)} flagged by the pre-scan; "
              f"might_hold {scan:.2f} us/record, check_foreign {check:.2f} us/record, "
              f"strip of a flagged record {walk:.2f} us")


if __name__ == "__main__":
    main()
