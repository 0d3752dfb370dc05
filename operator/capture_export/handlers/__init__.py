"""The kopf operator: one module of handlers per kind, plus the shared startup settings.

Each kind's module has ``register(registry, runtime)``, which adds its handlers to a kopf registry and
keeps its per-resource workers in ``runtime.workers``; :func:`build_registry` calls them all. A new kind
(RetentionPolicy) is one more module beside ``s3exporter.py`` and one more line in :data:`KIND_MODULES`.

``capture-export operator`` runs :func:`run`. ``kopf run -m capture_export.handlers`` works too: importing
this package fills kopf's default registry with a runtime configured from the environment.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kopf

from . import retentionpolicy, s3exporter
from .settings import OperatorConfig, Runtime

__all__ = ["KIND_MODULES", "OperatorConfig", "Runtime", "build_registry", "operate", "run"]

# Every kind the operator serves: each module's register(registry, runtime) adds its handlers.
KIND_MODULES: list[Callable[[kopf.OperatorRegistry, Runtime], None]] = [s3exporter.register,
                                                                      retentionpolicy.register]


def build_registry(runtime: Runtime, registry: kopf.OperatorRegistry | None = None) -> kopf.OperatorRegistry:
    from . import settings

    registry = registry if registry is not None else kopf.OperatorRegistry()
    settings.register(registry, runtime)
    for register in KIND_MODULES:
        register(registry, runtime)
    return registry


async def operate(config: OperatorConfig, *, runtime: Runtime | None = None, stop_flag: Any = None,
                  ready_flag: Any = None) -> None:
    """Run the operator in the current event loop until ``stop_flag`` is set (or SIGTERM/SIGINT)."""
    runtime = runtime or Runtime(config)
    await kopf.operator(
        registry=build_registry(runtime),
        clusterwide=not config.namespaces,
        namespaces=list(config.namespaces),
        standalone=config.standalone,
        identity=config.identity,  # type: ignore[arg-type]
        liveness_endpoint=config.liveness_endpoint,
        stop_flag=stop_flag,
        ready_flag=ready_flag,
    )


def run(config: OperatorConfig, **kwargs: Any) -> None:
    asyncio.run(operate(config, **kwargs))


# `kopf run -m capture_export.handlers` serves kopf's default registry: fill it on import.
build_registry(Runtime(OperatorConfig.from_env()), kopf.get_default_registry())
