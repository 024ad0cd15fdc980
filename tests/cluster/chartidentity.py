"""Authenticate as the Helm chart's ServiceAccount: render the chart's RBAC, apply it, get a token.

`BIGMODEL_OPERATOR_AS=chart` makes tests/integration/controller run the operator with the kubeconfig
that `operator_kubeconfig()` writes, so the BigModel and FineTuneJob scenarios pass (or fail with 403s
in .cluster/logs/operator.log) under exactly the permissions the chart grants. tests/integration/chart
uses the same helpers for `kubectl auth can-i`.
"""

from __future__ import annotations

import atexit
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
CHART = REPO / "charts" / "bigmodel-operator"
sys.path.insert(0, str(HERE))
import charttools  # noqa: E402
import clusterbuild  # noqa: E402

# The release whose ServiceAccount runs the controller scenarios (cluster-scoped names carry it).
OPERATOR_RELEASE = "it-operator"
OPERATOR_NAMESPACE = "bigmodel-operator-it"
TOKEN_SECONDS = 4 * 3600


def helm_env() -> dict[str, str]:
    """helm's cache, config and data under .cluster/helm, so tests never touch ~/.config/helm."""
    base = REPO / ".cluster" / "helm"
    return {
        **os.environ,
        "HELM_CACHE_HOME": str(base / "cache"),
        "HELM_CONFIG_HOME": str(base / "config"),
        "HELM_DATA_HOME": str(base / "data"),
    }


def helm(*args: str, kubeconfig: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [str(charttools.build_helm()), *args]
    if kubeconfig is not None:
        argv.append(f"--kubeconfig={kubeconfig}")
    proc = subprocess.run(argv, check=False, capture_output=True, text=True, env=helm_env(), timeout=300)
    if check and proc.returncode != 0:
        raise RuntimeError(f"helm {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc


def render(release: str, namespace: str, *values: str, show_only: tuple[str, ...] = ()) -> str:
    """`helm template` of the chart; `values` are extra flags such as `--set`, `key=value`."""
    only = [f"--show-only=templates/{name}" for name in show_only]
    return helm("template", release, str(CHART), f"--namespace={namespace}", *values, *only).stdout


def kubectl_bin() -> str:
    return str(clusterbuild.Layout.current().binaries()["kubectl"])


def kubectl(admin: Path, *args: str, input: str | None = None) -> str:
    argv = [kubectl_bin(), f"--kubeconfig={admin}", *args]
    proc = subprocess.run(argv, check=False, input=input, capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stderr}{proc.stdout}")
    return proc.stdout


def apply_identity(admin: Path, release: str, namespace: str, *values: str) -> str:
    """Create the namespace, apply the chart's ServiceAccount and RBAC; return the account's name."""
    manifest = render(release, namespace, *values, show_only=("serviceaccount.yaml", "rbac.yaml"))
    ns = yaml.safe_dump({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    kubectl(admin, "apply", "--server-side", "--field-manager=bigmodel-chart-tests", "-f", "-", input=ns)
    kubectl(admin, "apply", "--server-side", "--field-manager=bigmodel-chart-tests", "-f", "-", input=manifest)
    accounts = [d for d in yaml.safe_load_all(manifest) if d and d["kind"] == "ServiceAccount"]
    return str(accounts[0]["metadata"]["name"])


def token_kubeconfig(admin: Path, namespace: str, account: str, out: Path) -> Path:
    """A kubeconfig for the admin's cluster that authenticates with a TokenRequest token of `account`."""
    token = kubectl(admin, "create", "token", account, f"--namespace={namespace}", f"--duration={TOKEN_SECONDS}s")
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": account, "user": {"token": token.strip()}}]
    for context in config["contexts"]:
        context["context"]["user"] = account
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(yaml.safe_dump(config))
    out.chmod(0o600)
    return out


def operator_kubeconfig(admin: Path, out_dir: Path) -> Path:
    """The chart's identity for an operator that watches every namespace (the chart's default)."""
    account = apply_identity(admin, OPERATOR_RELEASE, OPERATOR_NAMESPACE, "--set=crds.install=false")
    path = token_kubeconfig(admin, OPERATOR_NAMESPACE, account, out_dir / "operator-as-chart.kubeconfig")
    record = os.environ.get("BIGMODEL_OPERATOR_RECORD")
    if record:  # every API call the operator makes goes through apirecorder.py into this file
        url, proc = start_recorder(admin, Path(record).resolve())
        atexit.register(proc.terminate)
        via_recorder(path, url)
    return path


def log_dir() -> Path:
    """Where the operator that runs as the chart's ServiceAccount logs (operator.log)."""
    path = REPO / ".cluster" / "logs" / "as-chart"
    path.mkdir(parents=True, exist_ok=True)
    return path


def start_recorder(admin: Path, out: Path) -> tuple[str, subprocess.Popen[bytes]]:
    """Start apirecorder.py in front of the apiserver, appending to `out`; its URL and process."""
    port_file = out.with_suffix(".port")
    port_file.unlink(missing_ok=True)
    argv = [sys.executable, str(HERE / "apirecorder.py"), f"--kubeconfig={admin}", f"--out={out}"]
    proc = subprocess.Popen([*argv, f"--port-file={port_file}"])
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError("apirecorder.py did not start")
        time.sleep(0.1)
    return f"http://127.0.0.1:{port_file.read_text()}", proc


def via_recorder(kubeconfig: Path, url: str) -> Path:
    """Point a token kubeconfig at the recorder (plain HTTP on 127.0.0.1; the recorder does TLS)."""
    config = yaml.safe_load(kubeconfig.read_text())
    config["clusters"][0]["cluster"] = {"server": url}
    kubeconfig.write_text(yaml.safe_dump(config))
    return kubeconfig
