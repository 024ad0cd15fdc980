#!/usr/bin/env python3
"""A real one-node Kubernetes cluster in a private network namespace, for `make e2e`.

    node.py up                  create the netns, start everything, apply the add-ons, wait until Ready
    node.py import ARCHIVE...   import OCI archives into the node's containerd (skips ones already there)
    node.py exec -- CMD...      run CMD inside the netns with KUBECONFIG set (tests, kubectl, helm)
    node.py status              processes, node and add-on pods
    node.py down                stop everything `up` started, remove the pods' mounts and the netns

Everything lives in the network namespace ``bigmodel-e2e``: etcd, kube-apiserver, controller-manager,
scheduler, containerd (+ runc), kubelet, kube-proxy, and the pods on the CNI bridge (CoreDNS, KubeRay,
the chart, the workloads). The namespace has no interface to the host and no route out; traffic to
pod and Service addresses only ever flows inside it. State: <repo>/.e2e (kubeconfig, pki, logs, pods),
containerd's image store: ~/.cache/bigmodel/containerd (so images survive `down`).
This cluster is separate from devcluster.py's (KWOK, 127.0.0.1 of the host), which the integration tests use.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clusterbuild
import clusterproc as proc
import nodebuild
import nodeobjects
from nodeconfig import (
    COMPONENTS,
    CONTAINERD_ROOT,
    DNS_IP,
    KUBECONFIG,
    LOGS,
    NETNS,
    NODE,
    NODE_BRIDGE,
    NODE_IP,
    SERVICE_CIDR,
    SOCKET,
    STATE,
    STATE_FILE,
    component_argv,
    write_configs,
    write_pki,
)


def log(msg: str) -> None:
    print(f"[e2e-node {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def sh(
    *argv: str, check: bool = True, input: str | None = None, timeout: float = 300
) -> subprocess.CompletedProcess[str]:
    out = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout, check=False)
    if check and out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr}{out.stdout}")
    return out


def in_netns(*argv: str) -> list[str]:
    """argv run in the node's network namespace only. Not `ip netns exec`: that also makes a private mount
    namespace with a fresh /sys (no cgroup mounts for the kubelet), and kubelet and containerd must share
    mounts (the volumes the kubelet mounts are bind-mounted into containers by containerd)."""
    return ["nsenter", f"--net=/run/netns/{NETNS}", "--", *argv]


# ---------------------------------------------------------------- network namespace


def netns_exists() -> bool:
    return NETNS in sh("ip", "netns", "list").stdout.split()


def create_netns() -> None:
    """The namespace with loopback and a port-less bridge holding the node address; no route out."""
    if not netns_exists():
        sh("ip", "netns", "add", NETNS)
    steps = [
        ["ip", "link", "set", "lo", "up"],
        ["ip", "link", "add", NODE_BRIDGE, "type", "bridge"],
        ["ip", "addr", "add", f"{NODE_IP}/24", "dev", NODE_BRIDGE],
        ["ip", "link", "set", NODE_BRIDGE, "up"],
        # Locally made connections to Service addresses need a route before kube-proxy's DNAT rewrites them.
        ["ip", "route", "add", SERVICE_CIDR, "dev", NODE_BRIDGE],
        ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"],
        ["sysctl", "-q", "-w", "net.bridge.bridge-nf-call-iptables=1"],
    ]
    links = sh(*in_netns("ip", "-o", "link")).stdout
    for step in steps:
        if step[:3] == ["ip", "link", "add"] and f" {NODE_BRIDGE}:" in links:
            continue
        result = sh(*in_netns(*step), check=False)
        if result.returncode != 0 and not any(s in result.stderr for s in ("File exists", "already assigned")):
            raise SystemExit(f"{' '.join(step)} in netns {NETNS}: {result.stderr}")
    # `ip netns exec` bind-mounts this over /etc/resolv.conf: tests inside resolve Service names.
    resolv = Path("/etc/netns") / NETNS / "resolv.conf"
    resolv.parent.mkdir(parents=True, exist_ok=True)
    resolv.write_text(f"nameserver {DNS_IP}\nsearch svc.cluster.local cluster.local\noptions ndots:5\n")


# ---------------------------------------------------------------- state and processes


def load_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def save_state(state: dict) -> None:
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def kubectl(
    *args: str, input: str | None = None, check: bool = True, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    state = load_state() or {}
    binary = state.get("binaries", {}).get("kubectl") or str(clusterbuild.Layout.current().binaries()["kubectl"])
    return sh(*in_netns(binary, f"--kubeconfig={KUBECONFIG}", *args), input=input, check=check, timeout=timeout)


def apply(objects: list[dict]) -> None:
    body = "\n---\n".join(json.dumps(o) for o in objects)
    kubectl("apply", "--server-side", "--force-conflicts", "--field-manager=bigmodel-e2e-node", "-f", "-", input=body)


def wait(what: str, check: Callable[[], bool], timeout: float, state: dict | None = None) -> float:
    start = time.monotonic()
    while not check():
        if state:
            dead = [n for n, p in state["processes"].items() if not proc.alive(p)]
            if dead:
                raise SystemExit(
                    f"{dead} exited while waiting for {what}; see {LOGS}/{dead[0]}.log:\n"
                    + proc.log_tail(LOGS / f"{dead[0]}.log")
                )
        if time.monotonic() - start > timeout:
            raise SystemExit(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)
    return time.monotonic() - start


def healthy(state: dict) -> bool:
    return all(proc.alive(p) for p in state["processes"].values()) and set(state["processes"]) == set(COMPONENTS)


def _api_ready() -> bool:
    return kubectl("get", "--raw=/readyz", check=False, timeout=10).returncode == 0


def _node_ready() -> bool:
    out = kubectl("get", "node", NODE, "-o", "jsonpath={.status.conditions[?(@.type=='Ready')].status}", check=False)
    return out.stdout.strip() == "True"


# ---------------------------------------------------------------- images


def imported() -> dict[str, str]:
    try:
        return json.loads((CONTAINERD_ROOT / "imported.json").read_text())
    except (OSError, ValueError):
        return {}


def _base_archive(index: dict) -> str | None:
    bases = {m.get("annotations", {}).get("bigmodel.io/base-archive") for m in index["manifests"]} - {None}
    return str(sorted(bases)[0]) if bases else None


def _missing_base_blobs(archive: Path, index: dict) -> str | None:
    """A thin archive (docs/images/thin_export.py) names the full archive holding the layers it leaves out:
    that archive's name when some of those layers are not in containerd's store yet, else None."""
    base = _base_archive(index)
    if not base:
        return None
    with tarfile.open(archive) as tar:
        inside = {Path(n).name for n in tar.getnames()}
        needed = set()
        for entry in index["manifests"]:
            member = tar.extractfile(f"blobs/sha256/{entry['digest'].split(':', 1)[1]}")
            assert member is not None
            needed |= {layer["digest"].split(":", 1)[1] for layer in json.load(member)["layers"]}
    ctr = in_netns("ctr", "-a", str(SOCKET), "-n", "k8s.io", "content", "ls", "-q")
    have = {d.split(":", 1)[-1] for d in sh(*ctr).stdout.split()}
    return None if needed - inside <= have else base


def _import_base(real: Path, base: str, refs: list[str]) -> None:
    log(f"{real.name} reuses layers of {base}: importing that first")
    import_images([real.parent / base], force=True)
    # Keep the base image under a name of its own: once the thin image takes over the tag, containerd's
    # garbage collector removed the base's layers (seen: each later thin import re-imported 3 GB).
    ctr = in_netns("ctr", "-a", str(SOCKET), "-n", "k8s.io", "images")
    for ref in refs:
        sh(*ctr, "tag", "--force", ref, f"bigmodel.local/base/{Path(base).stem.replace('.', '-')}:kept")


def import_images(archives: list[Path], force: bool = False) -> None:
    """`ctr images import` each OCI archive under the name it carries, once per archive content (`force`:
    again)."""
    done = imported()
    have = set(sh(*in_netns("ctr", "-a", str(SOCKET), "-n", "k8s.io", "images", "ls", "-q")).stdout.split())
    for archive in archives:
        real = archive.resolve()
        index = json.loads(sh("tar", "-xOf", str(real), "index.json").stdout)
        refs = [m["annotations"]["org.opencontainers.image.ref.name"] for m in index["manifests"]]
        if not force and all(done.get(ref) == real.name and ref in have for ref in refs):
            log(f"image {', '.join(refs)} already imported ({real.name})")
            continue
        base = _missing_base_blobs(real, index)
        if base:
            _import_base(real, base, refs)
        start = time.monotonic()
        argv = in_netns("ctr", "-a", str(SOCKET), "-n", "k8s.io", "images", "import", str(real))
        out = sh(*argv, check=False, timeout=1800)
        if out.returncode != 0 and not base and (base := _base_archive(index)) and "snapshot" in out.stderr:
            # The base's blobs are in the content store but containerd's garbage collector removed their
            # unpacked snapshots (seen: "parent snapshot ... does not exist"): unpack the base again, retry.
            log(f"importing {real.name} failed ({out.stderr.strip().splitlines()[-1][:200]}); retrying")
            _import_base(real, base, refs)
            out = sh(*argv, check=False, timeout=1800)
        if out.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr}{out.stdout}")
        done = imported()
        for ref in refs:
            done[ref] = real.name
        (CONTAINERD_ROOT / "imported.json").write_text(json.dumps(done, indent=2))
        log(f"imported {', '.join(refs)} in {time.monotonic() - start:.0f}s ({real.stat().st_size >> 20} MiB)")


# ---------------------------------------------------------------- commands


def up() -> dict:
    total = time.monotonic()
    layout, node_images = nodebuild.build()
    STATE.mkdir(parents=True, exist_ok=True)
    (STATE / ".gitignore").write_text("*\n")
    state = load_state()
    if state and healthy(state) and netns_exists():
        log("node already running")
        return state
    if state:
        down()
    create_netns()
    bins = {k: str(v) for k, v in clusterbuild.Layout.current().binaries().items()}
    bins |= {k: str(v) for k, v in layout.binaries().items()}
    for sub in ("etcd", "pki", "kubelet", "cni/ipam", "containerd/state"):
        shutil.rmtree(STATE / sub, ignore_errors=True)
    write_pki()
    write_configs()
    state = {"netns": NETNS, "binaries": bins, "processes": {}}
    save_state(state)

    def start(name: str) -> None:
        state["processes"][name] = proc.spawn(name, in_netns(*component_argv(name, bins)), STATE, LOGS)
        save_state(state)

    start("etcd")
    start("kube-apiserver")
    log(f"kube-apiserver ready after {wait('kube-apiserver /readyz', _api_ready, 180, state):.1f}s")
    start("kube-controller-manager")
    start("kube-scheduler")
    start("containerd")
    wait("containerd socket", SOCKET.exists, 60, state)
    import_images(list(node_images.values()))
    start("kubelet")
    start("kube-proxy")
    log(f"node {NODE} Ready after {wait(f'node {NODE} Ready', _node_ready, 180, state):.1f}s")
    addons(layout, state)
    log(f"up in {time.monotonic() - total:.0f}s; KUBECONFIG={KUBECONFIG} (inside netns {NETNS})")
    return state


def ensure_volumes(free: int = 4) -> None:
    """Keep `free` Available hostPath volumes; delete Released ones (and their data)."""
    pvs = json.loads(kubectl("get", "pv", "-l", "app.kubernetes.io/part-of=bigmodel-e2e-node", "-o", "json").stdout)
    available = 0
    for pv in pvs["items"]:
        phase = pv["status"].get("phase")
        if phase == "Released":
            kubectl("delete", "pv", pv["metadata"]["name"], "--wait=false")
            shutil.rmtree(pv["spec"]["hostPath"]["path"], ignore_errors=True)
        available += phase == "Available"
    made = []
    for _ in range(free - available):
        name = f"e2e-pv-{uuid.uuid4().hex[:8]}"
        path = STATE / "pv" / name
        path.mkdir(parents=True)
        path.chmod(0o777)
        made.append(nodeobjects.host_volume(name, str(path)))
    if made:
        apply(made)


def addons(layout: nodebuild.NodeLayout, state: dict) -> None:
    start = time.monotonic()
    apply([nodeobjects.storage_class()])
    ensure_volumes()
    crds = clusterbuild.Layout.current().kuberay_crds()
    kubectl("apply", "--server-side", "--force-conflicts", *[f"--filename={c}" for c in crds])
    apply(nodeobjects.coredns(nodebuild.COREDNS_IMAGE, DNS_IP))
    apply(nodeobjects.kuberay(nodebuild.KUBERAY_IMAGE, layout.kuberay_role().read_text()))
    for ns, name in (("kube-system", "coredns"), ("kuberay-system", "kuberay-operator")):
        kubectl("rollout", "status", "-n", ns, f"deployment/{name}", "--timeout=180s", timeout=200)
    log(f"CoreDNS, KubeRay {nodebuild.KUBERAY_OPERATOR_VERSION} and storage ready in {time.monotonic() - start:.0f}s")


def _remove_containers() -> None:
    """Kill and delete every container task (the shims outlive containerd otherwise)."""
    ctr = in_netns("ctr", "-a", str(SOCKET), "-n", "k8s.io")
    tasks = sh(*ctr, "tasks", "ls", "-q", check=False).stdout.split()
    for task in tasks:
        sh(*ctr, "tasks", "kill", "-s", "SIGKILL", task, check=False)
    deadline = time.monotonic() + 30
    for task in tasks:
        while sh(*ctr, "tasks", "delete", task, check=False).returncode != 0 and time.monotonic() < deadline:
            time.sleep(0.5)
    for container in sh(*ctr, "containers", "ls", "-q", check=False).stdout.split():
        sh(*ctr, "containers", "delete", container, check=False)


def _unmount_state() -> None:
    mounts = [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]
    for mount in sorted((m for m in mounts if m.startswith(str(STATE) + "/")), key=len, reverse=True):
        sh("umount", "-l", mount, check=False)


def down() -> None:
    state = load_state()
    if state:
        processes = state["processes"]
        proc.stop({n: processes[n] for n in ("kube-proxy", "kubelet") if n in processes})
        if "containerd" in processes and proc.alive(processes["containerd"]):
            _remove_containers()
        for name in COMPONENTS[2:]:
            if name in processes:
                log(f"{name}: {proc.stop({name: processes[name]}).get(name, 'not running')}")
    _unmount_state()
    # The pods' own namespaces (containerd names them cni-<uuid>; no other CRI runtime runs on these machines).
    for line in sh("ip", "netns", "list").stdout.splitlines():
        if line.startswith("cni-"):
            sh("ip", "netns", "delete", line.split()[0], check=False)
    if netns_exists():
        sh("ip", "netns", "delete", NETNS)
    shutil.rmtree(Path("/etc/netns") / NETNS, ignore_errors=True)
    STATE_FILE.unlink(missing_ok=True)
    log("down")


def status() -> int:
    state = load_state()
    if not state:
        print("not running")
        return 1
    for name, info in state["processes"].items():
        print(f"{name:24} pid {info['pid']:>7}  {'alive' if proc.alive(info) else 'DEAD'}")
    print(kubectl("get", "nodes,pods", "-A", "-o", "wide", check=False).stdout)
    return 0 if healthy(state) else 1


def exec_in(argv: list[str]) -> int:
    env = {**os.environ, "KUBECONFIG": str(KUBECONFIG)}
    # `ip netns exec` here: its /etc/netns/<name>/resolv.conf lets tests resolve Service names.
    return subprocess.run(["ip", "netns", "exec", NETNS, *argv], env=env, check=False).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up")
    sub.add_parser("down")
    sub.add_parser("status")
    imp = sub.add_parser("import")
    imp.add_argument("archives", nargs="+", type=Path)
    ex = sub.add_parser("exec")
    ex.add_argument("argv", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    if args.command == "up":
        up()
    elif args.command == "down":
        down()
    elif args.command == "status":
        return status()
    elif args.command == "import":
        import_images(args.archives)
    elif args.command == "exec":
        return exec_in(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
