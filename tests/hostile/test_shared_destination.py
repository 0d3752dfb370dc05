"""Issue 10, item 6: two S3Exporters with the same bucket and prefix were accepted, and one's sweep deleted
the other's objects. A destination whose control folder holds another exporter's checkpoint is refused
(``DestinationInUse``, naming the other exporter) unless the path template keeps them apart.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from capture_export.export.layout import parse_range
from capture_export.local_s3 import LocalS3

from .identity_support import (
    HostileExporter,
    assert_no_traceback,
    create_secret,
    failed_reasons,
    operator_cluster,
    operator_spec,
    seed_sqlite,
    wait_until,
)


def _assert_only_a_wrote(a: HostileExporter, b: HostileExporter) -> None:
    keys = a.data_keys()
    assert keys
    for key in keys:
        bounds = parse_range(key)
        assert bounds is not None and (bounds[0] - 1) % a.limit == 0, f"{key} is not a batch of {a.name}"
    assert b.checkpoint() is None


@pytest.mark.parametrize("how", ["in one run", "one after the other"])
def test_second_exporter_on_the_same_destination_is_refused(
    s3_server: LocalS3, bucket: str, tmp_path: Path, how: str
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=30)
    a = HostileExporter(s3_server, bucket, tmp_path, str(store), name="a", limit=100)
    b = HostileExporter(s3_server, bucket, tmp_path, str(store), name="b", limit=150)
    if how == "in one run":
        both = tmp_path / "both.yaml"
        both.write_text(f"{a.secret_document()}---\n{a.document()}---\n{b.document()}")
        a.manifest = b.manifest = both
        a.state = b.state = tmp_path / "state.json"
        result = a.run_once()
    else:
        assert a.run_once().returncode == 0
        result = b.run_once()
    assert result.returncode != 0, result.stdout
    assert_no_traceback(result)
    reasons = failed_reasons(b.status())
    assert "DestinationInUse" in reasons, b.status()
    assert "default/a" in reasons["DestinationInUse"]
    assert not failed_reasons(a.status()), a.status()
    _assert_only_a_wrote(a, b)
    audit = a.verify("--exporter", "a")
    assert audit.returncode == 0, audit.stdout
    assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout


def test_exporters_that_the_template_keeps_apart_share_a_prefix(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 1000, seed=31)
    template = "  pathTemplate: '{prefix}/{exporter}/{date}'\n"
    a = HostileExporter(s3_server, bucket, tmp_path, str(store), name="a", limit=100, extra_spec=template)
    b = HostileExporter(s3_server, bucket, tmp_path, str(store), name="b", limit=150, extra_spec=template)
    for exporter in (a, b, a, b):
        result = exporter.run_once()
        assert result.returncode == 0, result.stdout + result.stderr
    for exporter in (a, b):
        audit = exporter.verify()
        assert audit.returncode == 0, audit.stdout
        assert "missing: 0" in audit.stdout and "duplicated: 0" in audit.stdout


def test_template_without_the_exporter_is_no_way_apart(s3_server: LocalS3, bucket: str, tmp_path: Path) -> None:
    """Dated folders alone do not keep two exporters apart: both write into the same day's folder."""
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 500, seed=32)
    template = "  pathTemplate: '{prefix}/{date}'\n"
    a = HostileExporter(s3_server, bucket, tmp_path, str(store), name="a", limit=100, extra_spec=template)
    b = HostileExporter(s3_server, bucket, tmp_path, str(store), name="b", limit=150, extra_spec=template)
    assert a.run_once().returncode == 0
    before = a.snapshot()
    result = b.run_once()
    assert result.returncode != 0 and "DestinationInUse" in failed_reasons(b.status()), result.stdout
    assert a.snapshot() == before


def test_operator_refuses_a_second_exporter_on_the_same_destination(
    s3_server: LocalS3, bucket: str, tmp_path: Path
) -> None:
    store = tmp_path / "store.sqlite"
    seed_sqlite(store, 600, seed=33)
    a = HostileExporter(s3_server, bucket, tmp_path, str(store), name="a", limit=100)
    b = HostileExporter(s3_server, bucket, tmp_path, str(store), name="b", limit=150)
    with operator_cluster(store) as (kube, _operator):
        create_secret(kube, s3_server)
        kube.apply_exporter("a", operator_spec(a))
        kube.wait_status("a", lambda s: s.get("cursor") == "600", timeout=60, what="a's export")
        kube.apply_exporter("b", operator_spec(b))
        ready = kube.wait_condition("b", "Ready", "False", "DestinationInUse", timeout=60)
        assert "default/a" in ready["message"]
        # The Event is posted after the status patch: wait for it rather than list once.
        wait_until(lambda: any(reason == "DestinationInUse" for _, reason, _ in kube.events("b")), timeout=30,
                   what="a DestinationInUse Event about b")
    _assert_only_a_wrote(a, b)
