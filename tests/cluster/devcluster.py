#!/usr/bin/env python3
"""The project's test control plane: a real Kubernetes API with fake (KWOK) GPU nodes.

    devcluster.py build    build/cache the binaries only
    devcluster.py up       start (or reuse) the cluster, apply CRDs and nodes
    devcluster.py status   show processes and nodes
    devcluster.py down     stop what `up` started and remove its state

etcd, kube-apiserver (RBAC, service-account tokens), kube-controller-manager, kube-scheduler
and the KWOK controller run as local processes bound to 127.0.0.1. State lives in
<repo>/.cluster/ (kubeconfig, state.json, pki/, logs/), or $BIGMODEL_CLUSTER_DIR. Stdlib only, on purpose.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import shutil
import ssl
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clusterbuild
import clusterobjects
import clusterpki
import clusterproc as proc
from clusterpki import Pki

REPO = Path(__file__).resolve().parents[2]
# BIGMODEL_CLUSTER_DIR (with BIGMODEL_CLUSTER_PORT) runs a second cluster beside the first: tests/make_test.sh
# gives the controller tier its own, so that its cluster-wide operator never meets the suites' objects.
STATE_DIR = Path(os.environ.get("BIGMODEL_CLUSTER_DIR") or REPO / ".cluster")
STATE_FILE = STATE_DIR / "state.json"
LOCK_FILE = STATE_DIR / ".lock"
KUBECONFIG = STATE_DIR / "kubeconfig"
LOGS = STATE_DIR / "logs"
DEFAULT_PORT = 16443
# Fake addresses from the RFC 2544 benchmarking range, never routed. Nodes report 127.0.0.1
# so an apiserver proxy attempt (kubectl logs/exec) is refused locally instead of leaving it.
POD_CIDR = "198.18.0.0/16"
SERVICE_CIDR = "198.19.0.0/16"
# Stop order; start order is the reverse.
COMPONENTS = ("kwok", "kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd")


def log(msg: str) -> None:
    print(f"[devcluster] {msg}", flush=True)


def _admin_tls() -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(STATE_DIR / "pki" / "ca.crt"))
    ctx.load_cert_chain(STATE_DIR / "pki" / "admin.crt", STATE_DIR / "pki" / "admin.key")
    return ctx


def _self_signed_tls() -> ssl.SSLContext:
    # kube-controller-manager and kube-scheduler serve /healthz with a self-made cert.
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def _wait(what: str, check: Callable[[], bool], state: dict, timeout: float, component: str | None = None) -> float:
    start = time.monotonic()
    while True:
        if check():
            return time.monotonic() - start
        if component and not proc.alive(state["processes"][component]):
            raise ClusterError(f"{component} exited while waiting for {what}", component)
        if time.monotonic() - start > timeout:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}", component)
        time.sleep(0.25)


def _serves(url: str, context: ssl.SSLContext | None = None) -> Callable[[], bool]:
    return lambda: proc.http_get(url, context)[0] == 200


class ClusterError(Exception):
    def __init__(self, msg: str, component: str | None = None) -> None:
        super().__init__(msg)
        self.component = component


def apiserver_url(state: dict) -> str:
    return f"https://127.0.0.1:{state['ports']['kube-apiserver']}"


def _healthy(state: dict, patience: float = 0) -> bool:
    """All recorded processes alive and the apiserver ready (within `patience` seconds)."""
    deadline = time.monotonic() + patience
    while all(proc.alive(p) for p in state["processes"].values()):
        if proc.http_get(apiserver_url(state) + "/readyz", _admin_tls())[0] == 200:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(1)
    return False


# ---------------------------------------------------------------- state


def load_state() -> dict | None:
    try:
        return json.loads(STATE_FILE.read_text())
    except (OSError, ValueError):
        return None


def _save_state(state: dict) -> None:
    STATE_FILE.write_text(json.dumps(state, indent=2) + "\n")


def kubectl_argv(state: dict) -> list[str]:
    return [state["binaries"]["kubectl"], f"--kubeconfig={KUBECONFIG}", f"--cache-dir={STATE_DIR / 'kube-cache'}"]


# ---------------------------------------------------------------- commands


def _component_argv(name: str, state: dict) -> list[str]:
    bins, ports, pki = state["binaries"], state["ports"], STATE_DIR / "pki"
    etcd_client = f"http://127.0.0.1:{ports['etcd']}"
    etcd_peer = f"http://127.0.0.1:{ports['etcd-peer']}"
    kubeconfig = str(STATE_DIR / f"{name}.kubeconfig")
    delegated_auth = [f"--authentication-kubeconfig={kubeconfig}", f"--authorization-kubeconfig={kubeconfig}"]
    serving = ["--bind-address=127.0.0.1", f"--secure-port={ports.get(name, 0)}", f"--cert-dir={STATE_DIR / name}"]
    return {
        "etcd": [
            bins["etcd"],
            "--name=bigmodel-dev",
            f"--data-dir={STATE_DIR / 'etcd'}",
            f"--listen-client-urls={etcd_client}",
            f"--advertise-client-urls={etcd_client}",
            f"--listen-peer-urls={etcd_peer}",
            f"--initial-advertise-peer-urls={etcd_peer}",
            f"--initial-cluster=bigmodel-dev={etcd_peer}",
            # Disposable test data: skipping fsync makes every write several times faster.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            bins["kube-apiserver"],
            f"--etcd-servers={etcd_client}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['kube-apiserver']}",
            f"--tls-cert-file={pki / 'kube-apiserver.crt'}",
            f"--tls-private-key-file={pki / 'kube-apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authorization-mode=Node,RBAC",
            *clusterpki.apiserver_identity_flags(pki, SERVICE_CIDR),
            # The `kubernetes` Endpoints may not hold a loopback address; nothing needs it.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
        ],
        "kube-controller-manager": [
            bins["kube-controller-manager"],
            f"--kubeconfig={kubeconfig}",
            *delegated_auth,
            *serving,
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            f"--cluster-signing-cert-file={pki / 'ca.crt'}",
            f"--cluster-signing-key-file={pki / 'ca.key'}",
            # Its default lives under /usr/libexec, which it would otherwise create.
            f"--flex-volume-plugin-dir={STATE_DIR / 'kube-controller-manager' / 'flexvolume'}",
            "--profiling=false",
        ],
        "kube-scheduler": [
            bins["kube-scheduler"],
            f"--kubeconfig={kubeconfig}",
            *delegated_auth,
            *serving,
            "--leader-elect=false",
            "--profiling=false",
        ],
        "kwok": [
            bins["kwok"],
            f"--kubeconfig={kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={clusterobjects.KWOK_ANNOTATION}=fake",
            "--enable-crds=Stage",
            f"--cidr={POD_CIDR}",
            "--node-ip=127.0.0.1",
            "--node-lease-duration-seconds=40",
        ],
    }[name]


def _fresh_start(layout: clusterbuild.Layout, port: int) -> dict:
    if not proc.port_free(port):
        raise SystemExit(
            f"127.0.0.1:{port} is in use by another process; "
            "set BIGMODEL_CLUSTER_PORT to another port (or `devcluster.py down` an old cluster)"
        )
    for sub in ("etcd", "pki", "kube-controller-manager", "kube-scheduler", "kwok", "kube-cache"):
        shutil.rmtree(STATE_DIR / sub, ignore_errors=True)
    STATE_DIR.mkdir(exist_ok=True)
    etcd, peer, kcm, sched = proc.free_ports(4)
    state = {
        "ports": {
            "kube-apiserver": port,
            "etcd": etcd,
            "etcd-peer": peer,
            "kube-controller-manager": kcm,
            "kube-scheduler": sched,
        },
        "binaries": {k: str(v) for k, v in layout.binaries().items()},
        "processes": {},
    }
    pki = Pki.create(STATE_DIR / "pki")
    server = apiserver_url(state)
    for client in ("kube-controller-manager", "kube-scheduler", "kwok"):
        (STATE_DIR / f"{client}.kubeconfig").write_text(pki.kubeconfig(client, server))
    KUBECONFIG.write_text(pki.kubeconfig("admin", server))
    KUBECONFIG.chmod(0o600)

    def start(name: str, env: dict[str, str] | None = None) -> None:
        state["processes"][name] = proc.spawn(name, _component_argv(name, state), STATE_DIR, LOGS, env)
        _save_state(state)  # saved after every start so `down` can always clean up

    t0 = time.monotonic()
    start("etcd")
    took = _wait("etcd /health", _serves(f"http://127.0.0.1:{etcd}/health"), state, 60, "etcd")
    log(f"etcd healthy after {took:.1f}s")
    start("kube-apiserver")
    took = _wait("kube-apiserver /readyz", _serves(server + "/readyz", _admin_tls()), state, 180, "kube-apiserver")
    log(f"kube-apiserver ready after {took:.1f}s")
    start("kube-controller-manager")
    start("kube-scheduler")
    # Stage CRD, stages and nodes go in before KWOK starts, so nodes are initialised once,
    # with the right capacity.
    clusterobjects.apply_kwok(kubectl_argv(state), layout)
    start("kwok", {"KWOK_WORKDIR": str(STATE_DIR / "kwok")})  # ignore ~/.kwok/kwok.yaml
    for name in ("kube-controller-manager", "kube-scheduler"):
        url = f"https://127.0.0.1:{state['ports'][name]}/healthz"
        took = _wait(f"{name} /healthz", _serves(url, _self_signed_tls()), state, 120, name)
        log(f"{name} healthy after {took:.1f}s")
    log(f"control plane started in {time.monotonic() - t0:.1f}s")
    return state


def cmd_up(_: argparse.Namespace) -> int:
    t0 = time.monotonic()
    layout = clusterbuild.build()
    t_build = time.monotonic() - t0
    port = int(os.environ.get("BIGMODEL_CLUSTER_PORT", DEFAULT_PORT))
    state = load_state()
    running = state is not None and all(proc.alive(p) for p in state["processes"].values())
    if running and state is not None and state["ports"]["kube-apiserver"] != port:
        raise SystemExit(
            f"a cluster from this checkout is running on port {state['ports']['kube-apiserver']}; "
            "`devcluster.py down` it first to move it"
        )
    # Others may be using a running cluster: give a busy apiserver time before restarting it.
    reused = state is not None and _healthy(state, patience=60 if running else 0)
    if not reused:
        if state is not None:
            log("found a stale or unhealthy cluster; restarting it")
            _stop_all(state)
        try:
            state = _fresh_start(layout, port)
        except (ClusterError, SystemExit) as err:
            component = getattr(err, "component", None)
            if component:
                _print_log_tail(component)
            current = load_state()
            if current:
                _stop_all(current)
            raise SystemExit(f"cluster up failed: {err}") from None
    else:
        assert state is not None
        log(f"reusing the running cluster at {apiserver_url(state)}")
    t1 = time.monotonic()
    kubectl = kubectl_argv(state)
    if reused:
        clusterobjects.apply_kwok(kubectl, layout)
    clusterobjects.apply_crds(kubectl, layout.kuberay_crds() + sorted((REPO / "crds").glob("*.yaml")))
    try:
        took = clusterobjects.wait_ready(kubectl, timeout=180)
    except TimeoutError as err:
        _print_log_tail("kwok")
        raise SystemExit(f"cluster up failed: {err}") from None
    log(f"nodes Ready and default ServiceAccount present after {took:.1f}s")
    total = time.monotonic() - t0
    log(
        f"cluster {'reused' if reused else 'up'} in {total:.1f}s "
        f"(build check {t_build:.1f}s, objects and readiness {time.monotonic() - t1:.1f}s)"
    )
    print(f"\nexport KUBECONFIG={KUBECONFIG}\n{state['binaries']['kubectl']} get nodes", flush=True)
    return 0


def _print_log_tail(component: str) -> None:
    path = LOGS / f"{component}.log"
    print(f"--- last lines of {path}:\n{proc.log_tail(path)}", file=sys.stderr)


def _stop_all(state: dict) -> None:
    """Clients first, then the apiserver, then etcd, so each shuts down cleanly."""
    procs = state.get("processes", {})
    for group in (COMPONENTS[:3], COMPONENTS[3:4], COMPONENTS[4:]):
        present = {name: procs[name] for name in group if name in procs}
        for name, outcome in proc.stop(present).items():
            log(f"{outcome} {name} (pid {present[name]['pid']})")


def cmd_down(_: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        log("no cluster state found; nothing to stop")
    else:
        _stop_all(state)
    # Logs stay for post-mortems; everything else, etcd data included, goes.
    if STATE_DIR.exists():
        for entry in STATE_DIR.iterdir():
            if entry not in (LOGS, LOCK_FILE):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
    log("cluster down")
    return 0


def cmd_status(_: argparse.Namespace) -> int:
    state = load_state()
    if state is None:
        print("no cluster (run `devcluster.py up`)")
        return 1
    for name in reversed(COMPONENTS):
        info = state["processes"].get(name)
        alive = info is not None and proc.alive(info)
        port = state["ports"].get(name, "")
        print(f"{name:25} {'running' if alive else 'STOPPED':8} pid={info['pid'] if info else '-':<8} port={port}")
    healthy = _healthy(state)
    print(f"apiserver {apiserver_url(state)}: {'ready' if healthy else 'NOT READY'}")
    print(f"kubeconfig: {KUBECONFIG}")
    if healthy:
        subprocess.run([*kubectl_argv(state), "get", "nodes", "-L", "nvidia.com/gpu.product"], check=False)
    return 0 if healthy else 1


def cmd_build(_: argparse.Namespace) -> int:
    clusterbuild.build()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name, func in (("up", cmd_up), ("down", cmd_down), ("status", cmd_status), ("build", cmd_build)):
        sub.add_parser(name).set_defaults(func=func)
    args = parser.parse_args(argv)
    if args.command not in ("up", "down"):
        return args.func(args)
    STATE_DIR.mkdir(exist_ok=True)
    with open(LOCK_FILE, "w") as lock:
        # One up/down at a time per checkout (e.g. two pytest sessions starting together).
        fcntl.flock(lock, fcntl.LOCK_EX)
        return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
