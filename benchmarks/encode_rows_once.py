"""``encode_rows`` once on the first N records of a SQLite store, for counting its instructions (issue 13).

    .venv/bin/python benchmarks/encode_rows_once.py STORE CASE N

CASE: ``jsonl``, ``jsonl.zst``, ``jsonl+privacy``, ``jsonl.zst+privacy``, ``parquet``, ``parquet+privacy``,
``cbor`` (the default format: ids spliced into the stored bytes, ``id_head``) and ``cbor+filter`` (the same with
a filter on ``status_code``, the last field but ``capture``: ``peek_fields`` reads every top-level head before it).
Run it under valgrind with N and with 0 (the set-up alone: imports, the read, a warm-up batch of 10) and
divide the difference by N: the instructions per record, which the load of a shared machine does not move
(time does, by ±10%):

    valgrind --tool=callgrind --callgrind-out-file=/dev/null .venv/bin/python benchmarks/encode_rows_once.py \\
        store.sqlite jsonl 1000 2>&1 | grep Collected

A store of the standard records: ``.venv/bin/capture-export seed --store store.sqlite --count 5000 --seed 1``.
"""

from __future__ import annotations

import argparse

CASES = ("jsonl", "jsonl.zst", "jsonl+privacy", "jsonl.zst+privacy", "parquet", "parquet+privacy", "cbor",
         "cbor+filter")


def main() -> None:
    parser = argparse.ArgumentParser(description="encode_rows once on the first N records of a SQLite store "
                                                 "(run it under valgrind with N and with 0: see the docstring)")
    parser.add_argument("store", help="a SQLite capture store")
    parser.add_argument("case", choices=CASES)
    parser.add_argument("count", type=int, help="records to encode (0: the set-up alone)")
    arguments = parser.parse_args()
    store_path, case, count = arguments.store, arguments.case, arguments.count
    from capture_export.export.batch import BatchRecipe, FilterOptions, encode_rows
    from capture_export.store import SQLiteStore

    store = SQLiteStore(store_path)
    rows = store.read_batch(0, max(count, 10))
    parquet, cbor = case.startswith("parquet"), case.startswith("cbor")
    recipe = BatchRecipe(format="parquet" if parquet else "cbor-zstd" if cbor else "jsonl",
                         compression="zstd" if parquet or cbor or ".zst" in case else "none",
                         filter=FilterOptions(status_codes=(200,)) if case.endswith("+filter") else None,
                         seal=store.record_seal(), privacy_mode=case.endswith("+privacy"))
    encode_rows(recipe, rows[:10])  # imports and caches warmed up
    if count:
        encode_rows(recipe, rows[:count])
    store.close()


if __name__ == "__main__":
    main()
