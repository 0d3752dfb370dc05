"""Read the YAML a user would ``kubectl apply``: multi-document files of our kinds and Secrets.

The standalone runner uses this; validation goes through the same pydantic models as the CRD schema,
and every refusal names the file, the resource and the field.
"""

from __future__ import annotations

import base64
import binascii
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from .common import GROUP, VERSION
from .retention import RetentionPolicySpec
from .s3exporter import S3ExporterSpec

__all__ = ["SPEC_MODELS", "InvalidManifest", "ManifestSet", "Resource", "describe_validation_error",
           "expand_manifest_paths", "load_manifests", "parse_spec"]

API_VERSION = f"{GROUP}/{VERSION}"
# Kind -> spec model. Later kinds register themselves here.
SPEC_MODELS: dict[str, type[BaseModel]] = {"S3Exporter": S3ExporterSpec, "RetentionPolicy": RetentionPolicySpec}


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


def describe_validation_error(error: ValidationError, root: str = "spec") -> str:
    parts = []
    for item in error.errors():
        path = ".".join([root, *(str(p) for p in item["loc"])]) if item["loc"] else root
        message = item["msg"].removeprefix("Value error, ")
        parts.append(f"{path}: {message}")
    return "; ".join(parts)


def parse_spec(kind: str, spec: Any) -> BaseModel:
    model = SPEC_MODELS[kind]
    if not isinstance(spec, Mapping):
        raise InvalidManifest("spec: must be a mapping")
    try:
        return model.model_validate(dict(spec))
    except ValidationError as exc:
        raise InvalidManifest(describe_validation_error(exc)) from None


def _secret_data(doc: Mapping[str, Any], where: str) -> dict[str, str]:
    data: dict[str, str] = {}
    for key, value in (doc.get("data") or {}).items():
        try:
            data[key] = base64.b64decode(str(value), validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidManifest(f"{where}: data.{key} is not valid base64 text") from None
    for key, value in (doc.get("stringData") or {}).items():
        data[key] = str(value)
    return data


STDIN = "-"
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
    return sys.stdin.read() if str(path) == STDIN else path.read_text()


def _yaml_problem(exc: yaml.YAMLError) -> str:
    """What the parser found and where, on one line. Never ``str(exc)``: it quotes the offending line, which
    may be a Secret's value."""
    parts = []
    for text, mark in ((getattr(exc, "context", None), getattr(exc, "context_mark", None)),
                       (getattr(exc, "problem", None), getattr(exc, "problem_mark", None))):
        if text:
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
            parts.append(f"{text}{where}")
    return ": ".join(parts) or exc.__class__.__name__


def load_manifests(paths: Iterable[str | Path], *, default_namespace: str = "default") -> ManifestSet:
    """Every document of the files (see expand_manifest_paths), validated."""
    result = ManifestSet()
    seen: set[tuple[str, str, str]] = set()
    for path in expand_manifest_paths(paths):
        path = Path(path)
        try:
            documents = list(yaml.safe_load_all(_read_manifest(path)))
        except OSError as exc:
            raise InvalidManifest(f"{path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise InvalidManifest(f"{path}: not valid YAML: {_yaml_problem(exc)}") from None
        for index, doc in enumerate(documents):
            if doc is None:
                continue
            where = f"{path} (document {index + 1})"
            if not isinstance(doc, Mapping):
                raise InvalidManifest(f"{where}: not a mapping")
            kind = doc.get("kind")
            metadata = doc.get("metadata") or {}
            name = metadata.get("name")
            namespace = metadata.get("namespace") or default_namespace
            if not name:
                raise InvalidManifest(f"{where}: metadata.name is required")
            if kind == "Secret":
                result.secrets[(namespace, name)] = _secret_data(doc, f"{where} Secret {namespace}/{name}")
                continue
            if kind == "ConfigMap":
                result.config_maps[(namespace, name)] = {str(k): str(v) for k, v in (doc.get("data") or {}).items()}
                continue
            if kind not in SPEC_MODELS:
                raise InvalidManifest(f"{where}: unsupported kind {kind!r} (expected one of "
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
                    labels=dict(metadata.get("labels") or {}),
                    annotations=dict(metadata.get("annotations") or {}),
                    source=where,
                )
            )
    return result
