"""Objects the test control plane is seeded with: KWOK stages, fake nodes, CRDs.

Everything is applied with kubectl server-side apply under one field manager, so `up` can
re-apply it any number of times.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import clusterbuild

HERE = Path(__file__).resolve().parent
FIELD_MANAGER = "bigmodel-devcluster"
KWOK_ANNOTATION = "kwok.x-k8s.io/node"
# Pod annotations our stages react to (see manifests/).
FAIL_ANNOTATION = "bigmodel.io/kwok-fail"  # "true": Running, then Failed with exit code 1
FAIL_AFTER_ANNOTATION = "bigmodel.io/kwok-fail-after"  # Go duration to stay Running first
COMPLETE_AFTER_ANNOTATION = "bigmodel.io/kwok-complete-after"  # Go duration, then Succeeded


def _gpu_node(name: str, product: str, family: str, memory_mib: int, instance: str) -> dict[str, Any]:
    return {
        "name": name,
        "labels": {
            "nvidia.com/gpu.product": product,
            "nvidia.com/gpu.family": family,
            "nvidia.com/gpu.count": "8",
            "nvidia.com/gpu.memory": str(memory_mib),
            "node.kubernetes.io/instance-type": instance,
        },
        "taints": [{"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}],
        "capacity": {"cpu": "96", "memory": "1Ti", "pods": "110", "nvidia.com/gpu": "8", "ephemeral-storage": "2Ti"},
    }


# Labels follow NVIDIA GPU feature discovery, so scheduling code sees what it would on EKS/GKE.
NODES: tuple[dict[str, Any], ...] = (
    _gpu_node("gpu-h100-0", "NVIDIA-H100-80GB-HBM3", "hopper", 81559, "fake-h100-8x"),
    _gpu_node("gpu-a100-0", "NVIDIA-A100-SXM4-80GB", "ampere", 81920, "fake-a100-8x"),
    {
        "name": "cpu-0",
        "labels": {"node.kubernetes.io/instance-type": "fake-cpu-32"},
        "taints": [],
        "capacity": {"cpu": "32", "memory": "128Gi", "pods": "110", "ephemeral-storage": "500Gi"},
    },
)


def node_manifest(node: dict) -> dict:
    labels = {
        "type": "kwok",
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": node["name"],
        **node["labels"],
    }
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": node["name"],
            "labels": labels,
            "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
        },
        "spec": {"taints": node["taints"]},
    }


def kubectl(
    base: list[str], *args: str, stdin: str | None = None, check: bool = True, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*base, *args], check=False, input=stdin, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)} failed:\n{proc.stderr}{proc.stdout}")
    return proc


def _apply(base: list[str], *files: Path, stdin: str | None = None) -> list[str]:
    args = ["apply", "--server-side", "--force-conflicts", f"--field-manager={FIELD_MANAGER}", "-o", "name"]
    for f in files:
        args += ["-f", str(f)]
    if stdin is not None:
        args += ["-f", "-"]
    return kubectl(base, *args, stdin=stdin).stdout.split()


def _wait_established(base: list[str], names: list[str], timeout: int = 120) -> None:
    crds = [n for n in names if n.startswith("customresourcedefinition")]
    if crds:
        kubectl(base, "wait", "--for=condition=Established", f"--timeout={timeout}s", *crds)


def apply_kwok(base: list[str], layout: clusterbuild.Layout) -> None:
    """Stage CRD, KWOK's default stages, ours (manifests/stage-*.yaml) and the fake nodes."""
    manifests = layout.kwok_manifests()
    _wait_established(base, _apply(base, manifests[0]))
    _apply(base, *manifests[1:], *sorted((HERE / "manifests").glob("stage-*.yaml")))
    nodes = {"apiVersion": "v1", "kind": "List", "items": [node_manifest(n) for n in NODES]}
    _apply(base, stdin=json.dumps(nodes))
    for node in NODES:
        # Capacity is status, which apply on the main resource drops; patch the subresource.
        status = {"status": {"capacity": node["capacity"], "allocatable": node["capacity"]}}
        kubectl(base, "patch", "node", node["name"], "--subresource=status", "--type=merge", "-p", json.dumps(status))


def apply_crds(base: list[str], files: list[Path]) -> None:
    """Server-side apply: the KubeRay CRDs are too big for client-side apply's annotation."""
    if files:
        _wait_established(base, _apply(base, *files))


def _nodes_ready(base: list[str]) -> bool:
    out = kubectl(base, "get", "nodes", "-o", "json", check=False)
    if out.returncode != 0:
        return False
    items = {n["metadata"]["name"]: n for n in json.loads(out.stdout)["items"]}
    for node in NODES:
        item = items.get(node["name"])
        if item is None:
            return False
        conditions = {c["type"]: c["status"] for c in item.get("status", {}).get("conditions", [])}
        # The node lifecycle controller removes its not-ready taints a moment after Ready.
        taints = {t["key"] for t in item["spec"].get("taints", [])}
        if conditions.get("Ready") != "True" or any(t.startswith("node.kubernetes.io/") for t in taints):
            return False
    return True


def wait_ready(base: list[str], timeout: float) -> float:
    """Wait until every fake node is Ready and untainted and `default` has its ServiceAccount."""
    start = time.monotonic()
    while True:
        if (
            _nodes_ready(base)
            and kubectl(base, "get", "serviceaccount", "default", "-n", "default", check=False).returncode == 0
        ):
            return time.monotonic() - start
        if time.monotonic() - start > timeout:
            raise TimeoutError(f"nodes not Ready within {timeout:.0f}s")
        time.sleep(0.5)
