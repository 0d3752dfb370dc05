"""The Helm install path works as written, as far as it can be run here: the README's quick start and the
whole path in docs/operations.md ("Install on Kubernetes with Helm"). Their chart values render, the files
they name exist, and every `sed` they pipe through changes something."""

from __future__ import annotations

import re
import shlex
from typing import Any

import helm_python as helm
import pytest
import yaml

from tests.support import e2e_assets as e2e
from tests.support.chart_rendering import CHART_DIR, REPO_ROOT, pod_spec, render

# (file, section heading): where the install commands are. The operations guide holds the whole path;
# the README's quick start is its first half, and is checked the same way.
INSTALL = ("docs/operations.md", "## Install on Kubernetes with Helm")
QUICK_START = ("README.md", "### On Kubernetes")
SOURCES = [INSTALL, QUICK_START]


def _section(source: tuple[str, str] = INSTALL) -> str:
    path, heading = source
    text = (REPO_ROOT / path).read_text()
    assert heading in text, f"{path} has no {heading!r} section"
    after = text.split(heading, 1)[1]
    return re.split(r"\n#{2,3} ", after, maxsplit=1)[0]


def _commands(source: tuple[str, str] = INSTALL) -> list[str]:
    """Shell commands of the section's ```sh blocks, continuation lines joined."""
    commands = []
    for block in re.findall(r"```sh\n(.*?)```", _section(source), re.DOTALL):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            command = command.split("   #", 1)[0].strip()
            if command and not command.startswith("#"):
                commands.append(command)
    return commands


def _all_commands() -> list[str]:
    return [command for source in SOURCES for command in _commands(source)]


def test_section_has_the_whole_path() -> None:
    commands = "\n".join(_commands())
    for step in ("docker build", "helm install capture-export ./charts/capture-export", "kubectl apply",
                 "capture-export verify", "capture-export cat", "helm uninstall", "kubectl delete -f charts/"):
        assert step in commands, step


@pytest.mark.parametrize("command", [c for c in _all_commands() if c.startswith(("helm install", "helm upgrade"))])
def test_helm_commands_render(command: str) -> None:
    words = shlex.split(command)
    values: dict[str, Any] = {}
    for index, word in enumerate(words):
        if word == "--set":
            values = _merge(values, helm.parse_set_string(words[index + 1]))
    assert "./charts/capture-export" in words
    namespace = words[words.index("--namespace") + 1]
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = render(chart, values, namespace=namespace, release=words[2])
    assert rendered.one("Deployment")["metadata"]["name"] == "capture-export"  # the name the docs use


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else value
    return merged


def test_quick_start_is_the_install_path_cut_short() -> None:
    """The README's quick start installs and applies an exporter with the very commands of the whole path
    in docs/operations.md, which the checks below and the e2e suite keep honest."""
    quick = _commands(QUICK_START)
    for step in ("helm install capture-export ./charts/capture-export", "kubectl apply", "s3exporter/usage"):
        assert any(step in command for command in quick), step
    whole = _commands(INSTALL)
    for command in quick:
        assert command in whole, f"README quick start command not in docs/operations.md: {command}"


def test_files_named_exist() -> None:
    for command in _all_commands():
        for word in shlex.split(command):
            if re.match(r"^(\./)?(tests|examples|charts)/", word):
                assert (REPO_ROOT / word).exists(), f"{word} in: {command}"


def test_every_sed_changes_its_file() -> None:
    seds = [c for c in _all_commands() if c.startswith("sed ")]
    assert seds
    for command in seds:
        words = shlex.split(command)
        expression, path = words[1], words[2]
        _, old, _, _ = expression.split("|")
        assert old in (REPO_ROOT / path).read_text(), f"`{command}` would change nothing: {old!r} not in {path}"


def test_example_exporter_matches_the_minio_it_is_pointed_at() -> None:
    documents = [d for d in yaml.safe_load_all((REPO_ROOT / "examples" / "exporter.yaml").read_text()) if d]
    (secret,) = [d for d in documents if d["kind"] == "Secret"]
    (exporter,) = [d for d in documents if d["kind"] == "S3Exporter"]
    assert secret["stringData"]["access_key_id"] == e2e.MINIO_ACCESS_KEY
    assert secret["stringData"]["access_secret"] == e2e.MINIO_SECRET_KEY
    assert exporter["spec"]["bucket"] == e2e.BUCKET
    section = _section()
    assert f"--prefix {exporter['spec']['prefix']}" in section
    assert f"s3exporter/{exporter['metadata']['name']}" in section
    assert e2e.MINIO_ENDPOINT in section


def test_image_is_named_and_the_kind_path_loads_the_local_build() -> None:
    with helm.Chart.load(CHART_DIR) as chart:
        (container,) = pod_spec(render(chart))["containers"]
    section = _section()
    assert f"`{container['image'].rsplit(':', 1)[0]}:<appVersion>`" in section, "say which image runs by default"
    assert "--set image.repository=<registry>/capture-export --set image.tag=<tag>" in section
    commands = _commands()
    (build,) = [c for c in commands if c.startswith("docker build")]
    local_image = shlex.split(build)[3]
    assert f"docker image save {local_image} | kind load image-archive /dev/stdin --name capture" in commands
    (install,) = [c for c in commands if c.startswith("helm install") and "--create-namespace" in c]
    repository, tag = local_image.split(":")
    for flag in (f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never"):
        assert f"--set {flag}" in install, "the kind install must run the build it loaded"
    assert not any("kind load docker-image" in c for c in commands), "fails with containerd's image store"


CREDENTIALS = REPO_ROOT / "docs" / "storage-providers.md"


def _credentials_helm_command() -> str:
    text = CREDENTIALS.read_text()
    section = text.split("## Credentials, permissions and TLS", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", section, re.DOTALL)
    (command,) = [c for c in (re.sub(r"\\\n\s*", " ", b).strip() for b in blocks) if c.startswith("helm install")]
    return command


def test_the_irsa_command_annotates_the_operators_service_account() -> None:
    """IRSA: the documented --set-string puts eks.amazonaws.com/role-arn on the ServiceAccount the pod runs as
    (EKS then injects AWS_WEB_IDENTITY_TOKEN_FILE and AWS_ROLE_ARN, which the exporter's default chain
    honours: tests/integration/test_aws_roles.py)."""
    words = shlex.split(_credentials_helm_command())
    values: dict[str, Any] = {}
    for index, word in enumerate(words):
        if word == "--set-string":
            values = _merge(values, helm.parse_set_string(words[index + 1]))
    with helm.Chart.load(CHART_DIR) as chart:
        rendered = render(chart, values, namespace=words[words.index("--namespace") + 1], release=words[2])
    account = rendered.one("ServiceAccount")
    assert account["metadata"]["annotations"] == {
        "eks.amazonaws.com/role-arn": "arn:aws:iam::111122223333:role/capture-export"}
    assert pod_spec(rendered)["serviceAccountName"] == account["metadata"]["name"] == "capture-export"
    # The documented trust-policy subject names that account in that namespace.
    assert f"system:serviceaccount:{words[words.index('--namespace') + 1]}:capture-export" in CREDENTIALS.read_text()
