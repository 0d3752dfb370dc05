"""The "restricted" Pod Security Standard (https://kubernetes.io/docs/concepts/security/pod-security-standards/),
checked offline on a rendered pod spec: what Pod Security admission would reject."""

from __future__ import annotations

from typing import Any

__all__ = ["restricted_violations"]

RESTRICTED_VOLUME_TYPES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                           "projected", "secret"}
SAFE_SYSCTLS = {"kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
                "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
                "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
                "net.ipv4.tcp_keepalive_probes"}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}


def restricted_violations(spec: dict[str, Any], all_containers: list[dict[str, Any]]) -> list[str]:
    """Every rule of the restricted Pod Security Standard (which includes baseline) the pod breaks."""
    problems: list[str] = []
    pod_context = spec.get("securityContext", {})
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            problems.append(f"{field} is set")
    for volume in spec.get("volumes", []):
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUME_TYPES:
            problems.append(f"volume {volume['name']} has a disallowed type {sorted(kinds)}")
    for sysctl in pod_context.get("sysctls", []):
        if sysctl["name"] not in SAFE_SYSCTLS:
            problems.append(f"unsafe sysctl {sysctl['name']}")

    def check_shared(where: str, context: dict[str, Any]) -> None:
        if context.get("windowsOptions", {}).get("hostProcess"):
            problems.append(f"{where}: hostProcess")
        if context.get("runAsUser") == 0:
            problems.append(f"{where}: runAsUser 0")
        if context.get("appArmorProfile", {}).get("type") == "Unconfined":
            problems.append(f"{where}: AppArmor Unconfined")
        selinux = context.get("seLinuxOptions", {})
        if selinux.get("type", "") not in SELINUX_TYPES or selinux.get("user") or selinux.get("role"):
            problems.append(f"{where}: SELinux options {selinux}")
        seccomp = context.get("seccompProfile", {}).get("type")
        if seccomp is not None and seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccomp {seccomp}")

    check_shared("pod", pod_context)
    for container in all_containers:
        where = f"container {container['name']}"
        context = container.get("securityContext", {})
        check_shared(where, context)
        if context.get("privileged"):
            problems.append(f"{where}: privileged")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{where}: allowPrivilegeEscalation must be false")
        if context.get("procMount", "Default") != "Default":
            problems.append(f"{where}: procMount")
        capabilities = context.get("capabilities", {})
        if "ALL" not in capabilities.get("drop", []):
            problems.append(f"{where}: capabilities must drop ALL")
        if set(capabilities.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{where}: adds capabilities {capabilities['add']}")
        if context.get("runAsNonRoot", pod_context.get("runAsNonRoot")) is not True:
            problems.append(f"{where}: runAsNonRoot must be true")
        seccomp = context.get("seccompProfile", pod_context.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{where}: seccompProfile must be RuntimeDefault or Localhost")
        for port in container.get("ports", []):
            if port.get("hostPort"):
                problems.append(f"{where}: hostPort {port['hostPort']}")
    return problems
