"""What the container lets this process use: CPUs (scheduler affinity, the cgroup's CPU quota) and memory
(the cgroup's limit). In a pod these are ``resources.limits.cpu`` and ``resources.limits.memory``; cgroup v2
(``cpu.max``, ``memory.max``) and v1 (``cpu.cfs_quota_us``, ``memory.limit_in_bytes``) are both read."""

from __future__ import annotations

import math
import os
from pathlib import Path

__all__ = ["available_cpus", "cpu_quota", "memory_limit"]

CGROUP_ROOT = Path("/sys/fs/cgroup")
_NO_LIMIT = 1 << 60  # cgroup v1 says "no limit" with a huge number


def _directories(controller: str, root: Path = CGROUP_ROOT) -> list[Path]:
    """Where this process's cgroup files may be: its own cgroup (v2 unified, or the v1 controller's
    hierarchy) first, then the mount's root (inside a container's cgroup namespace they are the same)."""
    found: list[Path] = []
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        relative = path.lstrip("/")
        if controllers == "":
            found.append(root / relative)
        elif controller in controllers.split(","):
            found.append(root / controllers / relative)
    return [*found, root, root / controller]


def cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup's quota allows (e.g. 1.5), or None when there is no quota."""
    for directory in _directories("cpu", root):
        try:
            quota, period = (directory / "cpu.max").read_text().split()[:2]
            return None if quota == "max" else int(quota) / int(period)
        except (OSError, ValueError):
            pass
        try:
            quota_us = int((directory / "cpu.cfs_quota_us").read_text())
            period_us = int((directory / "cpu.cfs_period_us").read_text())
            return None if quota_us <= 0 else quota_us / period_us
        except (OSError, ValueError):
            pass
    return None


def available_cpus(root: Path = CGROUP_ROOT) -> int:
    """CPUs this process may use: its scheduler affinity, capped by the cgroup's CPU quota rounded up."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cpu_quota(root)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The cgroup's memory limit in bytes, or None when there is none."""
    for directory in _directories("memory", root):
        for name in ("memory.max", "memory.limit_in_bytes"):
            try:
                text = (directory / name).read_text().strip()
            except OSError:
                continue
            if text == "max":
                return None
            try:
                value = int(text)
            except ValueError:
                continue
            return value if 0 < value < _NO_LIMIT else None
    return None
