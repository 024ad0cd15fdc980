#!/usr/bin/env python3
"""A real one-node Kubernetes cluster in a private network namespace, for `make e2e`.

    node.py up                     create the netns, start everything, apply the add-ons, wait until Ready
    node.py import LAYOUT NAME...  import images from docs/images.sh's OCI layout (only what containerd lacks)
    node.py exec -- CMD...         run CMD inside the netns with KUBECONFIG set (tests, kubectl, helm)
    node.py status                 processes, node and add-on pods
    node.py down                   stop everything `up` started, remove the pods' mounts and the netns

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
import tempfile
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

REF_NAME = "org.opencontainers.image.ref.name"


def _ctr(*args: str) -> list[str]:
    return in_netns("ctr", "-a", str(SOCKET), "-n", "k8s.io", *args)


def _images() -> dict[str, str]:
    """containerd's images: name -> the digest it points at."""
    lines = sh(*_ctr("images", "ls")).stdout.splitlines()[1:]
    return {cols[0]: cols[2] for cols in (line.split() for line in lines) if len(cols) > 2}


def _import(argv: list[str], stdin: subprocess.Popen[bytes] | None = None) -> None:
    out = subprocess.run(
        argv, stdin=stdin.stdout if stdin else None, capture_output=True, text=True, timeout=1800, check=False
    )
    if stdin:
        assert stdin.stdout is not None
        stdin.stdout.close()
        if stdin.wait() != 0:
            raise SystemExit(f"{' '.join(map(str, stdin.args))} exited {stdin.returncode}")
    if out.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} exited {out.returncode}:\n{out.stderr}{out.stdout}")


def import_archives(archives: list[Path]) -> None:
    """`ctr images import` each OCI archive (the node's own small images), unless containerd has its images."""
    have = _images()
    for archive in archives:
        index = json.loads(sh("tar", "-xOf", str(archive), "index.json").stdout)
        if all(have.get(m["annotations"][REF_NAME]) == m["digest"] for m in index["manifests"]):
            log(f"{archive.name} already imported")
            continue
        start = time.monotonic()
        _import(_ctr("images", "import", str(archive)))
        log(f"imported {archive.name} in {time.monotonic() - start:.0f}s ({archive.stat().st_size >> 20} MiB)")


def _blob(digest: str) -> str:
    return f"blobs/sha256/{digest.split(':', 1)[1]}"


def import_from_layout(layout: Path, names: list[str]) -> None:
    """Import the images `names` from the OCI image layout docs/images.sh writes, streaming to `ctr images
    import` only the blobs containerd lacks (its layers are uncompressed, named by their diff_id: after a code
    change, our code's few MB). Each image is imported under a name of its own digest first and then tagged,
    so the layers it shares with the image it replaces stay referenced throughout (containerd's garbage
    collector once removed such a snapshot between the import and the unpack: "parent snapshot ... does not
    exist"); the earlier image is removed afterwards."""
    index = json.loads((layout / "index.json").read_text())
    entries = {m.get("annotations", {}).get(REF_NAME): m for m in index["manifests"]}
    oci_layout = (layout / "oci-layout").read_text()
    for name in names:
        entry = entries.get(name)
        if entry is None:
            raise SystemExit(f"no image {name} in {layout} (docs/images.sh builds it)")
        images = _images()
        if images.get(name) == entry["digest"]:
            log(f"image {name} already imported ({entry['digest'][:19]})")
            continue
        start = time.monotonic()
        manifest = json.loads((layout / _blob(entry["digest"])).read_text())
        have = set(sh(*_ctr("content", "ls", "-q")).stdout.split())
        layers = [layer["digest"] for layer in manifest["layers"] if layer["digest"] not in have]
        repo = name.rsplit(":", 1)[0]
        kept = f"{repo}:imported-{entry['digest'].split(':', 1)[1][:16]}"
        with tempfile.TemporaryDirectory() as tmp:
            (Path(tmp) / "oci-layout").write_text(oci_layout)
            one = {"schemaVersion": 2, "manifests": [{**entry, "annotations": {REF_NAME: kept}}]}
            (Path(tmp) / "index.json").write_text(json.dumps(one))
            blobs = [_blob(d) for d in (entry["digest"], manifest["config"]["digest"], *layers)]
            tar = subprocess.Popen(
                ["tar", "-cf", "-", "-C", tmp, "oci-layout", "index.json", "-C", str(layout), *blobs],
                stdout=subprocess.PIPE,
            )
            _import(_ctr("images", "import", "-"), stdin=tar)
        sh(*_ctr("images", "tag", "--force", kept, name))
        older = [n for n in images if n.startswith(f"{repo}:imported-") and n != kept]
        if older:
            sh(*_ctr("images", "rm", *older))
        size = sum(layer["size"] for layer in manifest["layers"] if layer["digest"] in layers)
        log(f"imported {name} in {time.monotonic() - start:.0f}s ({len(layers)} new layers, {size >> 20} MiB)")


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
    import_archives(list(node_images.values()))
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
    imp.add_argument("layout", type=Path)
    imp.add_argument("names", nargs="+")
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
        import_from_layout(args.layout, args.names)
    elif args.command == "exec":
        return exec_in(args.argv[1:] if args.argv[:1] == ["--"] else args.argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
