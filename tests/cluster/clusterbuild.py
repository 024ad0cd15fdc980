"""Build the test control plane's binaries from the Go module proxy and cache them.

Nothing is downloaded except Go modules: k8s.io/kubernetes and etcd are built from small
wrapper modules under ``gomod/`` (their own go.mod files carry ``replace`` directives, so
``go install pkg@version`` refuses them), KWOK is ``go install``ed, and the KubeRay CRDs are
copied out of the ray-operator module. Outputs live under
``$BIGMODEL_CACHE_DIR/k8s/<name>-<version>[-<hash of the wrapper go.mod/go.sum>]/``; a
directory counts only once its ``.complete`` marker exists, so an interrupted build is redone.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
GOMOD = HERE / "gomod"

KUBE_VERSION = "v1.36.3"
ETCD_VERSION = "v3.6.16"
KWOK_VERSION = "v0.8.0"
KUBERAY_VERSION = "v1.6.0"

KUBE_BINARIES = ("kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")
KUBERAY_CRDS = ("ray.io_rayclusters.yaml", "ray.io_rayjobs.yaml", "ray.io_rayservices.yaml")
# Stages kwokctl enables by default (node heartbeat in its lease flavour) plus the Stage CRD.
KWOK_MANIFESTS = {
    "kustomize/crd/bases/kwok.x-k8s.io_stages.yaml": "crd-stages.yaml",
    "kustomize/stage/node/fast/node-initialize.yaml": "stage-node-initialize.yaml",
    "kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml": "stage-node-heartbeat-with-lease.yaml",
    "kustomize/stage/pod/fast/pod-ready.yaml": "stage-pod-ready.yaml",
    "kustomize/stage/pod/fast/pod-complete.yaml": "stage-pod-complete.yaml",
    "kustomize/stage/pod/fast/pod-delete.yaml": "stage-pod-delete.yaml",
}


def cache_root() -> Path:
    base = os.environ.get("BIGMODEL_CACHE_DIR") or str(Path.home() / ".cache" / "bigmodel")
    return Path(base).expanduser() / "k8s"


def _module_hash(name: str) -> str:
    digest = hashlib.sha256()
    for f in ("go.mod", "go.sum"):
        digest.update((GOMOD / name / f).read_bytes())
    return digest.hexdigest()[:12]


def _kube_ldflags() -> str:
    major, minor = KUBE_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [
            f"-X {pkg}.gitVersion={KUBE_VERSION}",
            f"-X {pkg}.gitMajor={major}",
            f"-X {pkg}.gitMinor={minor}",
            f"-X {pkg}.gitTreeState=clean",
        ]
    return " ".join(flags)


@dataclass(frozen=True)
class Layout:
    """Where every cached artefact lives; computing it builds nothing."""

    kube: Path
    etcd: Path
    kwok: Path
    kuberay: Path

    @classmethod
    def current(cls) -> Layout:
        root = cache_root()
        return cls(
            kube=root / f"kubernetes-{KUBE_VERSION}-{_module_hash('k8s')}",
            etcd=root / f"etcd-{ETCD_VERSION}-{_module_hash('etcd')}",
            kwok=root / f"kwok-{KWOK_VERSION}",
            kuberay=root / f"kuberay-{KUBERAY_VERSION}",
        )

    def built(self) -> dict[str, Path]:
        """Binary name -> where the build puts it."""
        found = {name: self.kube / "bin" / name for name in KUBE_BINARIES}
        found["etcd"] = self.etcd / "bin" / "etcd"
        found["kwok"] = self.kwok / "bin" / "kwok"
        return found

    def binaries(self) -> dict[str, Path]:
        """Binary name -> path to run, preferring BIGMODEL_K8S_BIN_DIR where it has the binary."""
        return self.built() | overrides()

    def kwok_manifests(self) -> list[Path]:
        return [self.kwok / "manifests" / dest for dest in KWOK_MANIFESTS.values()]

    def kuberay_crds(self) -> list[Path]:
        return [self.kuberay / "crds" / name for name in KUBERAY_CRDS]


def overrides() -> dict[str, Path]:
    """Binaries found in BIGMODEL_K8S_BIN_DIR (e.g. setup-envtest's); those are not built."""
    bin_dir = os.environ.get("BIGMODEL_K8S_BIN_DIR")
    if not bin_dir:
        return {}
    found = {}
    for name in (*KUBE_BINARIES, "etcd", "kwok"):
        candidate = Path(bin_dir).expanduser() / name
        if candidate.is_file() and os.access(candidate, os.X_OK):
            found[name] = candidate
    return found


def _go_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env.update({"GOFLAGS": "-mod=mod", "CGO_ENABLED": "0", "GOWORK": "off"})
    env.update(extra or {})
    return env


def _run(cmd: list[str], cwd: Path, env: dict[str, str]) -> str:
    print("+", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=env, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"command failed ({proc.returncode}): {' '.join(cmd)}")
    return proc.stdout


def _go_build(wrapper: str, out: str, pkgs: list[str], ldflags: str) -> None:
    """One `go build` for all packages, so the packages they share compile once."""
    _run(["go", "build", "-trimpath", "-ldflags", ldflags, "-o", out, *pkgs], GOMOD / wrapper, _go_env())


def _module_dir(module: str, version: str, scratch: Path) -> Path:
    """Download a module's source through the proxy (checked against sum.golang.org)."""
    out = _run(["go", "mod", "download", "-json", f"{module}@{version}"], scratch, _go_env())
    return Path(json.loads(out)["Dir"])


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    """Serialise builds between concurrent test sessions sharing one cache."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _step(label: str, out_dir: Path, wanted: list[Path], build: Callable[[], object]) -> None:
    marker = out_dir / ".complete"
    if marker.exists() and all(p.exists() for p in wanted):
        print(f"cached {label}: {out_dir}", flush=True)
        return
    start = time.monotonic()
    out_dir.mkdir(parents=True, exist_ok=True)
    build()
    missing = [str(p) for p in wanted if not p.exists()]
    if missing:
        raise SystemExit(f"{label}: build finished but {missing} are missing")
    marker.write_text(time.strftime("%Y-%m-%dT%H:%M:%SZ\n", time.gmtime()))
    print(f"built {label} in {time.monotonic() - start:.0f}s", flush=True)


def build() -> Layout:
    """Build whatever is missing from the cache; return the layout. Idempotent."""
    if shutil.which("go") is None:
        raise SystemExit("Go is needed to build the test control plane (https://go.dev/dl/)")
    layout = Layout.current()
    root = cache_root()
    bins = layout.built()
    override = overrides()
    if override:
        print(f"using {sorted(override)} from BIGMODEL_K8S_BIN_DIR", flush=True)
    total = time.monotonic()
    with _locked(root):
        scratch = root / "scratch"
        scratch.mkdir(exist_ok=True)
        kube_wanted = [bins[b] for b in KUBE_BINARIES if b not in override]
        if kube_wanted:
            kube_pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in KUBE_BINARIES]
            _step(
                f"kubernetes {KUBE_VERSION} ({', '.join(KUBE_BINARIES)})",
                layout.kube,
                kube_wanted,
                lambda: _go_build("k8s", str(layout.kube / "bin") + "/", kube_pkgs, _kube_ldflags()),
            )
        if "etcd" not in override:
            etcd_pkg = "go.etcd.io/etcd/server/v3"
            _step(
                f"etcd {ETCD_VERSION}",
                layout.etcd,
                [bins["etcd"]],
                lambda: _go_build("etcd", str(bins["etcd"]), [etcd_pkg], "-s -w"),
            )

        def build_kwok() -> None:
            if "kwok" not in override:
                ldflags = f"-s -w -X sigs.k8s.io/kwok/pkg/consts.Version={KWOK_VERSION}"
                pkg = f"sigs.k8s.io/kwok/cmd/kwok@{KWOK_VERSION}"
                env = _go_env({"GOBIN": str(layout.kwok / "bin")})
                _run(["go", "install", "-trimpath", "-ldflags", ldflags, pkg], scratch, env)
            src = _module_dir("sigs.k8s.io/kwok", KWOK_VERSION, scratch)
            (layout.kwok / "manifests").mkdir(exist_ok=True)
            for rel, dest in KWOK_MANIFESTS.items():
                shutil.copyfile(src / rel, layout.kwok / "manifests" / dest)

        kwok_wanted = layout.kwok_manifests() + ([] if "kwok" in override else [bins["kwok"]])
        _step(f"kwok {KWOK_VERSION}", layout.kwok, kwok_wanted, build_kwok)

        def fetch_kuberay() -> None:
            src = _module_dir("github.com/ray-project/kuberay/ray-operator", KUBERAY_VERSION, scratch)
            (layout.kuberay / "crds").mkdir(exist_ok=True)
            for name in KUBERAY_CRDS:
                shutil.copyfile(src / "config" / "crd" / "bases" / name, layout.kuberay / "crds" / name)

        _step(f"KubeRay {KUBERAY_VERSION} CRDs", layout.kuberay, layout.kuberay_crds(), fetch_kuberay)
    print(f"build step done in {time.monotonic() - total:.0f}s (cache: {root})", flush=True)
    return layout


if __name__ == "__main__":
    build()
    sys.exit(0)
