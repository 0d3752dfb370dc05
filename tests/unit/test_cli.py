"""The command line a newcomer meets: --version, help with descriptions, defaults and examples, -f as
kubectl reads it, `status`, and progress lines."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from capture_export import __version__
from capture_export.api.manifests import InvalidManifest, load_manifests
from capture_export.cli import build_parser, main
from capture_export.progress import ProgressLine
from capture_export.status.table import evaluate_column, format_age, render_tables, state_objects

REPO = Path(__file__).resolve().parents[2]
CLI = [sys.executable, "-m", "capture_export.cli"]


def _subcommands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...],
                                                                                             argparse.ArgumentParser]]:
    """Every command below ``parser``, a group of commands (`store`, `s3`) as well as each of its own."""
    found = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                found.append(((*path, name), child))
                if any(isinstance(a, argparse._SubParsersAction) for a in child._actions):
                    found += _subcommands(child, (*path, name))
    return found


def test_version() -> None:
    result = subprocess.run([*CLI, "--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"capture-export {__version__}"


COMMANDS = _subcommands(build_parser())


def test_every_command_is_covered() -> None:
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"run", "status", "seed", "cat", "verify", "restore", "ingest", "crds", "operator", "demo",
            "s3", "s3 serve", "store", "store init", "quarantine"} <= names


@pytest.mark.parametrize(("path", "parser"), COMMANDS, ids=[" ".join(p) for p, _ in COMMANDS])
def test_every_command_has_a_description_defaults_and_an_example(path: tuple[str, ...],
                                                                  parser: argparse.ArgumentParser) -> None:
    text = parser.format_help()
    assert parser.description and len(parser.description) > 60, f"{' '.join(path)}: no description"
    assert "\n  capture-export " + " ".join(path) in text.partition("\nexamples:\n")[2], f"{' '.join(path)}: no example"
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{' '.join(path)} {action.option_strings[0]}: no help"
        if action.default not in (None, False) and not isinstance(action.default, list):
            rendered = parser._get_formatter()._expand_help(action)
            assert "(default" in rendered, f"{' '.join(path)} {action.option_strings[0]}: default not shown"


def test_help_of_a_command_runs() -> None:
    result = subprocess.run([*CLI, "s3", "serve", "--help"], capture_output=True, text=True)
    assert result.returncode == 0
    assert "(default: 8333)" in result.stdout


# -- -f as kubectl reads it -----------------------------------------------------------------------------

EXPORTER = """\
apiVersion: capture.dev/v1alpha1
kind: S3Exporter
metadata: {name: NAME, namespace: default}
spec: {bucket: capture-exports, region: us-east-1, prefix: NAME}
"""


def test_a_directory_loads_its_yaml_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "b.yaml").write_text(EXPORTER.replace("NAME", "second"))
    (tmp_path / "a.yml").write_text(EXPORTER.replace("NAME", "first"))
    (tmp_path / "c.json").write_text(json.dumps({
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s3"}, "stringData": {"access_key_id": "x"}}))
    (tmp_path / "notes.txt").write_text("not a manifest")
    (tmp_path / "nested").mkdir()
    (tmp_path / "nested" / "d.yaml").write_text(EXPORTER.replace("NAME", "nested"))
    manifests = load_manifests([tmp_path])
    assert [r.name for r in manifests.resources] == ["first", "second"]
    assert manifests.get("default", "s3") == {"access_key_id": "x"}


def test_an_empty_directory_is_refused(tmp_path: Path) -> None:
    with pytest.raises(InvalidManifest, match=r"a directory without \.yaml"):
        load_manifests([tmp_path])


def test_dash_reads_standard_input(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(EXPORTER.replace("NAME", "piped")))
    manifests = load_manifests(["-"])
    assert [r.name for r in manifests.resources] == ["piped"]
    with pytest.raises(InvalidManifest, match="only once"):
        load_manifests(["-", "-"])


def test_the_examples_directory_runs_as_one_set_of_manifests() -> None:
    manifests = load_manifests([REPO / "examples"])
    assert {r.name for r in manifests.of_kind("S3Exporter")} >= {"usage", "usage-analytics"}


def test_status_from_stdin_manifest(tmp_path: Path) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"S3Exporter/default/piped": {"cursor": "10"}}))
    result = subprocess.run([*CLI, "status", "--state", str(state), "-f", "-", "-o", "json"], capture_output=True,
                            text=True, input=EXPORTER.replace("NAME", "piped"))
    assert result.returncode == 0, result.stderr
    (item,) = json.loads(result.stdout)["items"]
    assert item["spec"]["bucket"] == "capture-exports"


# -- status ---------------------------------------------------------------------------------------------

STATE = {
    "S3Exporter/default/usage": {
        "observedGeneration": 1, "cursor": "100000", "epoch": 0, "backlog": 0,
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
             "lastTransitionTime": "2026-11-24T12:00:00Z"},
            {"type": "UpToDate", "status": "True", "reason": "CaughtUp", "message": "",
             "lastTransitionTime": "2026-11-24T12:00:00Z"}],
        "totals": {"rows": 100000, "bytes": 1, "objects": 20, "runs": 1, "failedRuns": 0, "filtered": 0},
        "lastSuccessfulExport": "2026-11-24T12:00:00Z",
    },
    "S3Exporter/team-a/broken": {
        "conditions": [{"type": "Ready", "status": "False", "reason": "SecretNotFound", "message": "x",
                        "lastTransitionTime": "2026-11-24T11:00:00Z"}],
        "cursor": "0",
    },
    "RetentionPolicy/default/keep-30-days": {
        "conditions": [
            {"type": "Ready", "status": "True", "reason": "Ready", "message": "",
             "lastTransitionTime": "2026-11-24T12:00:00Z"},
            {"type": "GateOpen", "status": "False", "reason": "ExporterNeverRun", "message": "",
             "lastTransitionTime": "2026-11-24T12:00:00Z"}],
        "gate": {"bound": "0", "limitingExporter": "archive"},
        "totals": {"purged": 0},
    },
}


def test_columns_are_the_crds_printer_columns() -> None:
    obj = state_objects(STATE)[0]
    assert evaluate_column('.status.conditions[?(@.type=="Ready")].status', obj) == "True"
    assert evaluate_column(".status.totals.rows", obj) == 100000
    assert evaluate_column(".status.gate.bound", obj) is None


def test_ages_read_as_kubectl_shows_them() -> None:
    from datetime import UTC, datetime

    now = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC)
    assert format_age("2026-11-24T11:59:15Z", now) == "45s"
    assert format_age("2026-11-24T11:48:00Z", now) == "12m"
    assert format_age("2026-11-24T07:00:00Z", now) == "5h"
    assert format_age("2026-11-21T12:00:00Z", now) == "3d"


def test_status_prints_one_table_per_kind() -> None:
    from datetime import UTC, datetime

    text = render_tables(state_objects(STATE), now=datetime(2026, 11, 24, 12, 5, tzinfo=UTC))
    exporters, policies = text.split("\n\n")
    header, *rows = exporters.splitlines()
    assert header.split() == ["NAMESPACE", "NAME", "READY", "EXPORTED", "BACKLOG", "LAST", "EXPORT"]
    assert rows[0].split() == ["default", "s3exporter/usage", "True", "100000", "0", "5m"]
    assert rows[1].split() == ["team-a", "s3exporter/broken", "False", "<none>", "<none>", "<none>"]
    assert policies.splitlines()[0].split()[:5] == ["NAMESPACE", "NAME", "READY", "GATE", "LIMITED"]
    assert "retentionpolicy/keep-30-days" in policies
    assert "archive" in policies
    wide = render_tables(state_objects(STATE), wide=True)
    assert "SecretNotFound" in wide and "ExporterNeverRun" in wide


def test_status_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    state = tmp_path / "state.json"
    state.write_text(json.dumps(STATE))
    assert main(["status", "--state", str(state)]) == 0
    out = capsys.readouterr().out
    assert "s3exporter/usage" in out and "retentionpolicy/keep-30-days" in out

    assert main(["status", "--state", str(state), "-o", "json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["kind"] == "List"
    assert [(i["kind"], i["metadata"]["namespace"], i["metadata"]["name"]) for i in listing["items"]] == [
        ("S3Exporter", "default", "usage"), ("S3Exporter", "team-a", "broken"),
        ("RetentionPolicy", "default", "keep-30-days")]
    assert listing["items"][0]["status"]["cursor"] == "100000"

    # With -f: only the resources of the manifests, with their spec columns.
    manifest = tmp_path / "usage.yaml"
    manifest.write_text(EXPORTER.replace("NAME", "usage"))
    assert main(["status", "--state", str(state), "-f", str(manifest)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:3] == ["NAMESPACE", "NAME", "BUCKET"]
    assert "capture-exports" in out and "broken" not in out


def test_status_without_a_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "--state", str(tmp_path / "none.json")]) == 0
    assert "No resources found" in capsys.readouterr().err


# -- progress -------------------------------------------------------------------------------------------


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_is_silent_for_a_quick_command(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("capture_export.progress.time.monotonic", clock)
    out = io.StringIO()
    progress = ProgressLine("restoring", 1000, out=out)
    clock.now += 0.5
    progress.update(1000)
    progress.finish()
    assert out.getvalue() == ""


def test_progress_shows_after_a_second(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("capture_export.progress.time.monotonic", clock)
    out = io.StringIO()
    progress = ProgressLine("restoring", 1000, out=out)
    clock.now += 1.5
    progress.update(300)
    clock.now += 0.2
    progress.update(400)  # within the interval: not printed
    clock.now += 1.0
    progress.update(1000)
    progress.finish()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("restoring: 300/1,000 records (30%)")
    assert lines[1].startswith("restoring: 1,000/1,000 records (100%)")


def test_progress_gives_a_slow_rate_and_a_rate_of_another_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr("capture_export.progress.time.monotonic", clock)
    out = io.StringIO()
    slow = ProgressLine("restoring", 1000, out=out)
    clock.now += 4.0
    slow.update(2)
    verifying = ProgressLine("verifying", 40, unit="objects", rate_unit="records", out=out)
    clock.now += 2.0
    verifying.update(3, rated=15_000)
    lines = out.getvalue().splitlines()
    assert lines[0] == "restoring: 2/1,000 records (0%), 0.5/s, 4s"
    assert lines[1] == "verifying: 3/40 objects (8%), 15,000 records, 7,500 records/s, 2s"


def test_every_ingest_limit_is_an_option_of_the_ingest_server_and_of_the_operator() -> None:
    """A deployment with large bodies must be able to move each bound that turns requests away (503)."""
    import dataclasses

    from capture_export.cli.ingest import ingest_limits
    from capture_export.cli.parser import build_parser
    from capture_export.ingest import IngestLimits

    # All but the group commit's size, which tunes the transactions and turns no request away.
    limits = [field.name for field in dataclasses.fields(IngestLimits) if field.name != "max_group_records"]
    values = {name: str(1000 + index) for index, name in enumerate(limits)}
    for command, prefix in (("ingest", ""), ("operator", "ingest-")):
        argv = [command, *(["--token-file", "tokens"] if command == "ingest" else [])]
        for name, value in values.items():
            argv += [f"--{prefix}{name.replace('_', '-')}", value]
        parsed = ingest_limits(build_parser().parse_args(argv))
        assert {name: str(getattr(parsed, name)) for name in limits} == values, command


def test_status_shows_how_much_a_long_purge_has_left() -> None:
    """A purge that goes on over several runs (status.purgeInProgress) shows what remains, as kubectl does."""
    policy = STATE["RetentionPolicy/default/keep-30-days"]
    purging = {**STATE, "RetentionPolicy/default/keep-30-days": {
        **policy, "purgeInProgress": {"started": "2026-11-24T11:00:00Z", "purged": 1200000, "softDeleted": 0,
                                      "remaining": 3400000, "ratePerSecond": 5000.0,
                                      "updated": "2026-11-24T12:00:00Z"}}}
    policies = render_tables(state_objects(purging)).split("\n\n")[1].splitlines()
    header, row = policies[0], policies[1]
    assert "REMAINING" in header.split()
    assert row[header.index("REMAINING"):].split()[0] == "3400000"


def test_every_path_option_is_named_as_the_parser_spells_it() -> None:
    """cli/errors.py names a bad path with its option by the option's dest: each dest it knows is that
    option in every command that has it (a renamed option would otherwise be named wrongly)."""
    from capture_export.cli.errors import PATH_OPTIONS

    found: dict[str, set[str]] = {dest: set() for dest in PATH_OPTIONS}
    for _, parser in COMMANDS:
        for action in parser._actions:
            if action.dest in found and not isinstance(action, argparse._SubParsersAction):
                found[action.dest].add(action.option_strings[0] if action.option_strings else "")
    assert {dest: flags for dest, flags in found.items() if flags != {PATH_OPTIONS[dest]}} == {}
