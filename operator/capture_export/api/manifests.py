"""Read the YAML a user would ``kubectl apply``: multi-document files of our kinds and Secrets.

The standalone runner uses this; validation goes through the same pydantic models as the CRD schema,
and every refusal names the file, the resource and the field.
"""

from __future__ import annotations

import base64
import binascii
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .. import api
from .common import DNS_LABEL, DNS_SUBDOMAIN, GROUP, VERSION

__all__ = ["SPEC_MODELS", "InvalidManifest", "ManifestSet", "Resource", "describe_validation_error",
           "expand_manifest_paths", "load_manifests", "parse_spec"]

API_VERSION = f"{GROUP}/{VERSION}"
# Kind -> the name of its spec model in the API package, which imports each model's module on first use:
# manifests of exporters alone never build the RetentionPolicy models. Later kinds register themselves here.
SPEC_MODELS: dict[str, str] = {"S3Exporter": "S3ExporterSpec", "RetentionPolicy": "RetentionPolicySpec"}


class InvalidManifest(ValueError):
    """A manifest the API server (or the standalone runner) would refuse."""


@dataclass
class Resource:
    kind: str
    namespace: str
    name: str
    spec: Any
    generation: int = 1
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    source: str = ""

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass
class ManifestSet:
    resources: list[Resource] = field(default_factory=list)
    secrets: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)
    config_maps: dict[tuple[str, str], dict[str, str]] = field(default_factory=dict)

    def of_kind(self, kind: str) -> list[Resource]:
        return [r for r in self.resources if r.kind == kind]

    def get(self, namespace: str, name: str) -> dict[str, str] | None:
        """SecretSource over the Secrets found in the manifests."""
        return self.secrets.get((namespace, name))

    def get_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """ConfigMapSource over the ConfigMaps found in the manifests (a caBundleRef's CA)."""
        return self.config_maps.get((namespace, name))


# A spec-level rule's message names its field first ("pathTemplate: must start with …", see rule_error).
_FIELD_FIRST = re.compile(r"^([a-z][A-Za-z0-9]*(?:\.[a-z][A-Za-z0-9]*)*): (.+)$", re.DOTALL)


def describe_validation_error(error: ValidationError, root: str = "spec") -> str:
    """Each refusal as ``path: rule``, never quoting the value refused (it may be a secret or hold escape
    sequences): ``spec.limit: Input should be less than or equal to 10000``."""
    parts = []
    for item in error.errors():
        loc = [str(p) for p in item["loc"]]
        message = item["msg"].removeprefix("Value error, ")
        if not loc and (field_first := _FIELD_FIRST.match(message)):
            loc, message = field_first.group(1).split("."), field_first.group(2)
        path = ".".join([root, *loc])
        parts.append(f"{path}: {message}")
    return "; ".join(parts)


def parse_spec(kind: str, spec: Any) -> BaseModel:
    """Validate a spec as the CRD's schema does: strictly typed (``every: true`` is not a number, nor
    ``suspend: "yes"`` a boolean), unknown fields refused."""
    model: type[BaseModel] = getattr(api, SPEC_MODELS[kind])
    if not isinstance(spec, Mapping):
        raise InvalidManifest("spec: must be a mapping")
    try:
        return model.model_validate(dict(spec), strict=True)
    except ValidationError as exc:
        raise InvalidManifest(describe_validation_error(exc)) from None


def _check_name(value: Any, field: str, *, label: bool) -> str:
    """A metadata name (a DNS subdomain) or namespace (a DNS label), as the API server checks it; the
    message never quotes a bad value (it may hold escape sequences or be thousands of characters)."""
    pattern, limit, kind = (DNS_LABEL, 63, "DNS label") if label else (DNS_SUBDOMAIN, 253, "DNS subdomain")
    if not isinstance(value, str):
        raise InvalidManifest(f"{field}: must be a string")
    if len(value) > limit or not re.match(pattern, value):
        raise InvalidManifest(f"{field}: must be a {kind}: at most {limit} lowercase letters, digits, '-'"
                              + ("" if label else " and '.'") + ", starting and ending with a letter or digit")
    return value


def _string_map(value: Any, field: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidManifest(f"{field}: must be a mapping of strings")
    for key, item in value.items():
        if not isinstance(key, str) or not isinstance(item, str):
            raise InvalidManifest(f"{field}: keys and values must be strings"
                                  + (f" ({field}.{key} is not)" if isinstance(key, str) and key.isidentifier() else ""))
    return dict(value)


_SECRET_KEY = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")


def _secret_section(doc: Mapping[str, Any], section: str, where: str) -> dict[str, str]:
    """``data`` or ``stringData``: a mapping of keys to strings, as the API server types them. A null value
    is refused, not read as the string "None"."""
    value = doc.get(section)
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise InvalidManifest(f"{where}: {section}: must be a mapping of keys to strings")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or not _SECRET_KEY.match(key):
            raise InvalidManifest(f"{where}: {section}: keys must be letters, digits, '-', '_' and '.'")
        if not isinstance(item, str):
            given = "null" if item is None else type(item).__name__
            raise InvalidManifest(f"{where}: {section}.{key}: must be a string ({given} given)")
        out[key] = item
    return out


def _secret_data(doc: Mapping[str, Any], where: str) -> dict[str, str]:
    data: dict[str, str] = {}
    for key, value in _secret_section(doc, "data", where).items():
        try:
            data[key] = base64.b64decode(value, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidManifest(f"{where}: data.{key} is not valid base64 text") from None
    data.update(_secret_section(doc, "stringData", where))
    return data


STDIN = "-"
STDIN_LABEL = "standard input (-f -)"
MANIFEST_SUFFIXES = (".yaml", ".yml", ".json")


def expand_manifest_paths(paths: Iterable[str | Path]) -> list[Path]:
    """What ``-f`` names, as kubectl reads it: a file; ``-`` for standard input (once); a directory for the
    ``.yaml``, ``.yml`` and ``.json`` files in it (not its subdirectories), in name order."""
    expanded: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if str(raw) == STDIN:
            if any(str(p) == STDIN for p in expanded):
                raise InvalidManifest("-f -: standard input can be read only once")
            expanded.append(path)
        elif path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix in MANIFEST_SUFFIXES and p.is_file())
            if not files:
                raise InvalidManifest(f"{path}: a directory without {', '.join(MANIFEST_SUFFIXES)} files")
            expanded.extend(files)
        else:
            expanded.append(path)
    return expanded


def _read_manifest(path: Path) -> str:
    if str(path) != STDIN:
        return path.read_text(encoding="utf-8")
    stdin = getattr(sys.stdin, "buffer", None)  # bytes, decoded strictly whatever the locale
    return stdin.read().decode("utf-8") if stdin is not None else sys.stdin.read()


def _yaml_problem(path: Path | str, exc: yaml.YAMLError) -> str:
    """What the parser found and where, on one line. Never ``str(exc)``: it quotes the offending line, which
    may be a Secret's value; and a problem can quote a token (``found undefined tag handle '!x'``), so only
    short quotes (characters) are kept."""
    parts = []
    for text, mark in ((getattr(exc, "context", None), getattr(exc, "context_mark", None)),
                       (getattr(exc, "problem", None), getattr(exc, "problem_mark", None))):
        if text:
            text = re.sub(r"'[^']{4,}'|\"[^\"]{4,}\"", "'…'", str(text))
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            parts.append(f"{text}{where}")
    return f"{path}: not valid YAML: {': '.join(parts) or exc.__class__.__name__}"


def load_manifests(paths: Iterable[str | Path], *, default_namespace: str = "default") -> ManifestSet:
    """Every document of the files (see expand_manifest_paths), validated."""
    result = ManifestSet()
    seen: set[tuple[str, str, str]] = set()
    for path in expand_manifest_paths(paths):
        path = Path(path)
        label = STDIN_LABEL if str(path) == STDIN else str(path)
        try:  # a file that cannot be read is an OSError: the command names it with its option
            documents = list(yaml.safe_load_all(_read_manifest(path)))
        except UnicodeDecodeError:
            raise InvalidManifest(f"{label}: not UTF-8 text") from None
        except yaml.YAMLError as exc:
            raise InvalidManifest(_yaml_problem(label, exc)) from None
        if all(doc is None for doc in documents):
            raise InvalidManifest(f"{label}: empty, no manifest in it")
        for index, doc in enumerate(documents):
            if doc is None:
                continue
            where = f"{path} (document {index + 1})"
            if not isinstance(doc, Mapping):
                raise InvalidManifest(f"{where}: not a mapping")
            kind = doc.get("kind")
            metadata = doc.get("metadata") or {}
            if not isinstance(metadata, Mapping):
                raise InvalidManifest(f"{where}: metadata: must be a mapping")
            if not metadata.get("name"):
                raise InvalidManifest(f"{where}: metadata.name is required")
            name = _check_name(metadata.get("name"), f"{where}: metadata.name", label=False)
            namespace = _check_name(metadata.get("namespace") or default_namespace, f"{where}: metadata.namespace",
                                    label=True)
            labels = _string_map(metadata.get("labels"), f"{where}: metadata.labels")
            annotations = _string_map(metadata.get("annotations"), f"{where}: metadata.annotations")
            if kind == "Secret":
                if ("Secret", namespace, name) in seen:
                    raise InvalidManifest(f"{where}: Secret {namespace}/{name} is defined twice")
                seen.add(("Secret", namespace, name))
                result.secrets[(namespace, name)] = _secret_data(doc, f"{where} Secret {namespace}/{name}")
                continue
            if kind == "ConfigMap":
                result.config_maps[(namespace, name)] = _string_map(doc.get("data"),
                                                                    f"{where} ConfigMap {namespace}/{name}: data")
                continue
            if kind not in SPEC_MODELS:
                shown = repr(kind) if len(repr(kind)) <= 64 else repr(kind)[:60] + "…"
                raise InvalidManifest(f"{where}: unsupported kind {shown} (expected one of "
                                      f"{', '.join(sorted(SPEC_MODELS))}, Secret or ConfigMap)")
            if doc.get("apiVersion") != API_VERSION:
                raise InvalidManifest(f"{where}: {kind} {name}: apiVersion must be {API_VERSION}")
            if (kind, namespace, name) in seen:
                raise InvalidManifest(f"{where}: {kind} {namespace}/{name} is defined twice")
            seen.add((kind, namespace, name))
            try:
                spec = parse_spec(kind, doc.get("spec"))
            except InvalidManifest as exc:
                raise InvalidManifest(f"{where}: {kind} {namespace}/{name}: {exc}") from None
            result.resources.append(
                Resource(
                    kind=kind,
                    namespace=namespace,
                    name=name,
                    spec=spec,
                    labels=labels,
                    annotations=annotations,
                    source=where,
                )
            )
    return result
