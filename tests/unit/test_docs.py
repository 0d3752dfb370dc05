"""The docs hold what a user relies on, and stay true as the code moves: every field of both CRDs is in
the reference, each command's help there is the real `--help`, every manifest shown is one the models
accept, the SQLite insert contract is the store's schema and its example inserts a record that exports,
every link between the documents lands on a file and a heading that exist, and the layout in
docs/development.md is the package's tree."""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import cbor2
import pytest
import yaml

from capture_export.api.manifests import load_manifests
from capture_export.store.records import with_id
from capture_export.store.sqlite import SQLiteStore

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs"
PACKAGE = REPO / "operator" / "capture_export"
REFERENCE = (DOCS / "reference.md").read_text()
CLI = Path(sys.executable).parent / "capture-export"


def _fields(schema: dict[str, Any], path: str) -> list[str]:
    found = []
    for name, sub in (schema.get("properties") or {}).items():
        found.append(f"{path}.{name}")
        found += _fields(sub, f"{path}.{name}")
        if "properties" in sub.get("items", {}):
            found += _fields(sub["items"], f"{path}.{name}[]")
    return found


@pytest.mark.parametrize("crd", ["s3exporters", "retentionpolicies"])
@pytest.mark.parametrize("part", ["spec", "status"])
def test_every_crd_field_is_in_the_reference(crd: str, part: str) -> None:
    document = yaml.safe_load((REPO / "crds" / f"{crd}.capture.dev.yaml").read_text())
    schema = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"][part]
    missing = [field for field in _fields(schema, part) if f"| `{field}` |" not in REFERENCE]
    assert missing == [], f"docs/reference.md lacks {missing}"


def _documented_help() -> dict[str, str]:
    return dict(re.findall(r"### capture-export ([a-z0-9 ]+)\n\n```text\n(.*?)\n```", REFERENCE, re.DOTALL))


def test_the_reference_documents_every_command() -> None:
    listed = subprocess.run([CLI, "--help"], capture_output=True, text=True, check=True).stdout
    # A long name ("quarantine") has its summary on the next line.
    commands = set(re.findall(r"^    ([a-z0-9]+)(?: |$)", listed, re.MULTILINE))
    documented = {name.split()[0] for name in _documented_help()}
    assert commands and commands == documented


@pytest.mark.parametrize("command", sorted(_documented_help()))
def test_the_reference_help_is_the_real_help(command: str) -> None:
    # A newcomer's shell: defaults shown in the help come from these variables when they are set.
    env = {key: value for key, value in os.environ.items() if not key.startswith(("CAPTURE_EXPORT_", "POD_"))}
    real = subprocess.run([CLI, *command.split(), "--help"], capture_output=True, text=True, check=True,
                          env={**env, "COLUMNS": "100"}).stdout.rstrip()
    assert _documented_help()[command] == real, \
        f"`capture-export {command} --help` changed: regenerate its block in docs/reference.md"


def _yaml_blocks(path: Path) -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", path.read_text(), re.DOTALL)


@pytest.mark.parametrize("name", ["storage-providers.md"])
def test_every_provider_manifest_is_accepted(name: str, tmp_path: Path) -> None:
    blocks = [b for b in _yaml_blocks(DOCS / name) if "kind: S3Exporter" in b]
    assert len(blocks) >= 6  # AWS S3 with keys, with the default chain, R2, GCS, B2, MinIO
    for index, block in enumerate(blocks):
        manifest = tmp_path / f"{index}.yaml"
        manifest.write_text(block)
        loaded = load_manifests([manifest])
        (exporter,) = loaded.of_kind("S3Exporter")
        secret_ref = exporter.spec.secret_ref
        if secret_ref is not None:  # the Secret the exporter names is the one shown with it
            assert loaded.get(exporter.namespace, secret_ref.name), f"block {index}: no Secret {secret_ref.name}"


def _store_contract() -> str:
    return (DOCS / "store-contract.md").read_text()


def test_the_sqlite_contract_is_the_stores_schema(tmp_path: Path) -> None:
    section = _store_contract().split("## SQLite", 1)[1].split("\n## ", 1)[0]
    create = re.search(r"CREATE TABLE captures \((.*?)\n\);", section, re.DOTALL)
    assert create
    documented = [line.split()[0] for line in create.group(1).strip().splitlines()]
    store = SQLiteStore(tmp_path / "store.sqlite")
    store.close()
    with sqlite3.connect(tmp_path / "store.sqlite") as connection:
        actual = [row[1] for row in connection.execute("PRAGMA table_info(captures)")]
    assert documented == actual
    assert "INSERT INTO captures (ts_us, body) VALUES (?, ?);" in section


def test_the_sqlite_example_inserts_a_record_the_store_exports(tmp_path: Path) -> None:
    (example,) = re.findall(r"```python\n(.*?)```", _store_contract(), re.DOTALL)
    SQLiteStore(tmp_path / ".capture-export" / "store.sqlite").close()  # created as the contract says
    subprocess.run([sys.executable, "-c", example], cwd=tmp_path, check=True, timeout=60)
    store = SQLiteStore(tmp_path / ".capture-export" / "store.sqlite")
    try:
        (stored,) = store.read_batch(0, 10)
    finally:
        store.close()
    record = cbor2.loads(with_id(stored.id, stored.body))
    assert list(record)[:3] == ["id", "ver", "timestamp"] and record["id"] == 1 and record["ver"] == 2
    assert record["model"] == "claude-sonnet-4" and record["usage"]["output_tokens"] == 40
    assert stored.timestamp_us == int(record["timestamp"].timestamp() * 1_000_000)


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = re.sub(r"[`*]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.DOTALL)
    return {_slug(m) for m in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE)}


@pytest.mark.parametrize("page", [REPO / "README.md", *sorted(DOCS.glob("*.md"))], ids=lambda p: p.name)
def test_links_land_on_a_file_and_a_heading(page: Path) -> None:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"^[a-z]+://", target):
            continue
        file_part, _, anchor = target.partition("#")
        linked = (page.parent / file_part).resolve() if file_part else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in _anchors(linked)):
            broken.append(target)
    assert broken == [], f"{page.name}: broken links {broken}"


def test_the_readme_links_every_document() -> None:
    readme = (REPO / "README.md").read_text()
    for page in DOCS.glob("*.md"):
        assert f"](docs/{page.name})" in readme, f"README does not link docs/{page.name}"


def _layout_entries() -> dict[str, str]:
    """The entries of operator/capture_export/ in the Layout block of docs/development.md (a module, or a
    folder ending in '/'), each with its description."""
    text = (DOCS / "development.md").read_text()
    match = re.search(r"^## Layout\n\n```\n(.*?)^```", text, re.DOTALL | re.MULTILINE)
    assert match, "docs/development.md has no Layout block"
    entries: dict[str, str] = {}
    inside, current = False, ""
    for line in match.group(1).splitlines():
        if line.startswith("operator/capture_export/"):
            inside = True
        elif inside and not line.startswith("  "):
            break
        elif inside and not line.startswith("   "):
            current, _, description = line.strip().partition(" ")
            entries[current] = description
        elif inside:
            entries[current] += " " + line.strip()
    return entries


def test_the_layout_names_every_module_and_no_other() -> None:
    entries = _layout_entries()
    tree = {f"{path.name}/" for path in PACKAGE.iterdir() if path.is_dir() and any(path.glob("*.py"))}
    tree |= {path.name for path in PACKAGE.glob("*.py") if path.name != "__init__.py"}
    assert sorted(set(entries) - tree) == [], "in the layout but not in the tree"
    assert sorted(tree - set(entries)) == [], "in the tree but not in the layout"
    named = [(folder, module) for folder, description in entries.items() if folder.endswith("/")
             for module in re.findall(r"\b(\w+\.py)\b", description)]
    assert [f"{folder}{module}" for folder, module in named if not any((PACKAGE / folder).rglob(module))] == []


PAGES = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


def _shell_lines(text: str) -> list[str]:
    """The commands of a page's sh blocks, one per line, continuation lines joined, comment lines left out."""
    blocks = re.findall(r"```(?:sh|bash)\n(.*?)```", text, re.DOTALL)
    return [line.strip() for block in blocks for line in block.replace("\\\n", " ").splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("page", PAGES + EXAMPLES, ids=lambda p: p.name)
def test_no_command_shown_is_a_bare_capture_export(page: Path) -> None:
    """A newcomer's shell has no capture-export on its PATH: in a checkout the command is
    .venv/bin/capture-export (what ./demo.sh sets up), in the operator's pod `kubectl exec ... -- capture-export`.
    A command that starts with a bare `capture-export` fails with 'command not found'."""
    text = page.read_text()
    if page.suffix == ".md":
        bare = [line for line in _shell_lines(text) if re.match(r"(nice )?capture-export ", line)]
    else:  # the "Without one:" commands in the examples' comments
        bare = re.findall(r"^#.*?\s(capture-export .*)$", text, re.MULTILINE)
    assert bare == [], f"{page.name}: write .venv/bin/capture-export in {bare}"


def _commands_shown(text: str) -> list[tuple[str, str]]:
    """(command, arguments) of each capture-export command a page shows, in sh blocks or inline code."""
    helps = _documented_help()
    inline = re.findall(r"`([^`\n]*capture-export [^`\n]*)`", re.sub(r"```.*?```", "", text, flags=re.DOTALL))
    shown = []
    for line in _shell_lines(text) + inline:
        for match in re.finditer(r"(?:^|[\s/])capture-export ([a-z0-9]+(?: [a-z0-9]+)?)([^|;#>]*)", line):
            words = match.group(1).split()
            command = next((" ".join(words[:n]) for n in (2, 1) if " ".join(words[:n]) in helps), None)
            if command is not None:
                shown.append((command, " ".join(words[len(command.split()):]) + match.group(2)))
    return shown


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_flag_shown_is_one_the_command_takes(page: Path) -> None:
    helps = _documented_help()  # the real --help, kept so by test_the_reference_help_is_the_real_help
    unknown = [(command, flag) for command, arguments in _commands_shown(page.read_text())
               for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", arguments)
               if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", helps[command])]
    assert unknown == [], f"{page.name}: flags its commands do not take: {unknown}"


@pytest.mark.parametrize("command", sorted(_documented_help()))
def test_the_manifests_the_help_examples_name_exist(command: str) -> None:
    """Run from the repository's root, as the reference says, an example's manifests are the checkout's."""
    examples = _documented_help()[command].partition("\nexamples:\n")[2]
    named = re.findall(r"(?<![\w./-])([\w./-]+\.ya?ml)\b", examples)
    assert [path for path in named if not (REPO / path).exists()] == []
