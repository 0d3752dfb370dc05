"""The first S3 client of a process loads botocore's service models (S3's, the endpoint rules): ~100,000
dicts and lists kept for the life of the process. The cyclic garbage collector walking them as they are
made, over and over, was a third of the client's CPU, at every start of `capture-export run --once`."""

from __future__ import annotations

import subprocess
import sys

# In a fresh interpreter (this one has loaded the models already): the collections while the client is made.
FIRST_CLIENT = """\
import gc
from capture_export.objectstore import Credentials, S3Location, S3ObjectStore

collections = []
gc.callbacks.append(lambda phase, info: collections.append(info["generation"]) if phase == "start" else None)
S3ObjectStore(S3Location("exports", "us-east-1", "http://127.0.0.1:9"), Credentials("key", "secret"))
gc.callbacks.clear()
print(len(collections), collections.count(2))
"""


def test_making_the_first_s3_client_leaves_the_garbage_collector_alone() -> None:
    result = subprocess.run([sys.executable, "-c", FIRST_CLIENT], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    collections, full = map(int, result.stdout.split())
    # At most the one that follows the pause, over what the models left (before: ~50, one of them full).
    assert collections <= 1 and full == 0, f"{collections} collections, {full} of them full"
