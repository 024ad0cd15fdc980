"""Build what the e2e node needs beyond the control plane, from the Go module proxy and Debian, and cache it.

    python tests/cluster/nodebuild.py          build whatever is missing
    python tests/cluster/nodebuild.py --check  list what is missing (exit 1 if anything), build nothing

- kubelet and kube-proxy: the same wrapper module and version as the control plane (clusterbuild.py);
- CoreDNS and the KubeRay operator: ``go install <module>@<version>`` (their go.mod files have no
  ``replace`` directives), plus KubeRay's RBAC role from the same module;
- three small images for the node, exported as OCI archives into the image cache next to the ones
  docs/images.sh builds: a pause image (Debian's busybox-static), CoreDNS and the KubeRay operator,
  each one static binary on an empty base (buildah, no Dockerfile: nobody outside the e2e node uses them).

Outputs: ``~/.cache/bigmodel/k8s/{kubernetes-node,coredns,kuberay-operator}-<version>...`` and
``~/.cache/bigmodel/images/<name>-<hash>.oci.tar``; a step whose outputs exist is skipped.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import clusterbuild as cb

COREDNS_VERSION = "v1.13.1"
KUBERAY_OPERATOR_VERSION = cb.KUBERAY_VERSION
NODE_BINARIES = ("kubelet", "kube-proxy")
# Image references the node uses; nothing pulls them (containerd has them imported, pullPolicy Never).
PAUSE_IMAGE = "bigmodel.local/pause:busybox"
COREDNS_IMAGE = f"bigmodel.local/coredns:{COREDNS_VERSION}"
KUBERAY_IMAGE = f"bigmodel.local/kuberay-operator:{KUBERAY_OPERATOR_VERSION}"


def image_cache() -> Path:
    return cb.cache_root().parent / "images"


@dataclass(frozen=True)
class NodeLayout:
    node: Path
    coredns: Path
    kuberay: Path

    @classmethod
    def current(cls) -> NodeLayout:
        root = cb.cache_root()
        return cls(
            node=root / f"kubernetes-node-{cb.KUBE_VERSION}-{cb._module_hash('k8s')}",
            coredns=root / f"coredns-{COREDNS_VERSION}",
            kuberay=root / f"kuberay-operator-{KUBERAY_OPERATOR_VERSION}",
        )

    def binaries(self) -> dict[str, Path]:
        found = {name: self.node / "bin" / name for name in NODE_BINARIES}
        found["coredns"] = self.coredns / "bin" / "coredns"
        found["kuberay-operator"] = self.kuberay / "bin" / "ray-operator"
        return found

    def kuberay_role(self) -> Path:
        return self.kuberay / "rbac" / "role.yaml"


def _image_key(name: str, files: list[Path], entrypoint: list[str]) -> str:
    digest = hashlib.sha256(name.encode())
    for f in files:
        digest.update(f.read_bytes())
    digest.update(repr(entrypoint).encode())
    return digest.hexdigest()[:16]


def _buildah(*args: str) -> str:
    proc = subprocess.run(["buildah", *args], check=False, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"buildah {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout.strip()


def _slug(ref: str) -> str:
    """The archive name's prefix for an image reference: `bigmodel.local/pause:busybox` -> `pause-busybox`."""
    return ref.rsplit("/", maxsplit=1)[-1].replace(":", "-")


def static_image(ref: str, files: dict[str, Path], entrypoint: list[str], user: str = "65532:65532") -> Path:
    """An image of a few static files on an empty base, as a cached OCI archive; returns the archive."""
    cache = image_cache()
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / f"{_slug(ref)}-{_image_key(ref + user, list(files.values()), entrypoint)}.oci.tar"
    if out.exists():
        print(f"cached image {ref}: {out}", flush=True)
        return out
    start = time.monotonic()
    ctr = _buildah("from", "--quiet", "scratch")
    try:
        for dest, src in files.items():
            _buildah("copy", "--chmod", "0755", ctr, str(src), dest)
        _buildah("config", "--entrypoint", repr(entrypoint).replace("'", '"'), "--user", user, ctr)
        _buildah("commit", "--quiet", ctr, ref)
    finally:
        _buildah("rm", ctr)
    partial = out.with_suffix(".partial")
    _buildah("push", "--quiet", ref, f"oci-archive:{partial}:{ref}")
    partial.rename(out)
    print(f"built image {ref} in {time.monotonic() - start:.0f}s: {out} ({out.stat().st_size >> 20} MiB)", flush=True)
    return out


def _busybox(scratch: Path) -> Path:
    """Debian's statically linked busybox (apt-get download: the package, not the whole archive)."""
    target = scratch / "busybox-static" / "bin" / "busybox"
    if target.exists():
        return target
    work = scratch / "busybox-static"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["apt-get", "download", "busybox-static"], check=True, cwd=work, capture_output=True)
    deb = next(work.glob("busybox-static_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(work / "root")], check=True)
    (work / "bin").mkdir(exist_ok=True)
    shutil.copyfile(work / "root" / "bin" / "busybox", target)
    target.chmod(0o755)
    return target


def build() -> tuple[NodeLayout, dict[str, Path]]:
    """Build the node binaries and images that are missing; return the layout and ref -> archive."""
    cb.build()  # the control plane first: kubelet/kube-proxy then reuse its compiled packages
    layout = NodeLayout.current()
    bins = layout.binaries()
    root = cb.cache_root()
    with cb._locked(root):
        scratch = root / "scratch"
        scratch.mkdir(exist_ok=True)
        pkgs = [f"k8s.io/kubernetes/cmd/{b}" for b in NODE_BINARIES]
        cb._step(
            f"kubernetes node {cb.KUBE_VERSION} ({', '.join(NODE_BINARIES)})",
            layout.node,
            [bins[b] for b in NODE_BINARIES],
            lambda: cb._go_build("k8s", str(layout.node / "bin") + "/", pkgs, cb._kube_ldflags()),
        )

        def go_install(pkg: str, out: Path) -> None:
            env = cb._go_env({"GOBIN": str(out / "bin")})
            cb._run(["go", "install", "-trimpath", "-ldflags", "-s -w", pkg], scratch, env)

        cb._step(
            f"CoreDNS {COREDNS_VERSION}",
            layout.coredns,
            [bins["coredns"]],
            lambda: go_install(f"github.com/coredns/coredns@{COREDNS_VERSION}", layout.coredns),
        )

        def build_kuberay() -> None:
            module = "github.com/ray-project/kuberay/ray-operator"
            go_install(f"{module}@{KUBERAY_OPERATOR_VERSION}", layout.kuberay)
            src = cb._module_dir(module, KUBERAY_OPERATOR_VERSION, scratch)
            (layout.kuberay / "rbac").mkdir(exist_ok=True)
            shutil.copyfile(src / "config" / "rbac" / "role.yaml", layout.kuberay_role())

        cb._step(
            f"KubeRay operator {KUBERAY_OPERATOR_VERSION}",
            layout.kuberay,
            [bins["kuberay-operator"], layout.kuberay_role()],
            build_kuberay,
        )
        busybox = _busybox(scratch)
    images = {
        PAUSE_IMAGE: static_image(PAUSE_IMAGE, {"/bin/busybox": busybox}, ["/bin/busybox", "sleep", "2147483647"]),
        COREDNS_IMAGE: static_image(COREDNS_IMAGE, {"/coredns": bins["coredns"]}, ["/coredns"]),
        KUBERAY_IMAGE: static_image(KUBERAY_IMAGE, {"/manager": bins["kuberay-operator"]}, ["/manager"]),
    }
    return layout, images


def missing() -> list[str]:
    """What `build()` would have to build (Go builds: CoreDNS ~20 min, KubeRay ~15 min cold on 2 cores)."""
    layout = NodeLayout.current()
    absent = [
        f"{directory.name} (Go build)"
        for directory in (layout.node, layout.coredns, layout.kuberay)
        if not (directory / ".complete").exists()
    ]
    absent += [f"{path.name}" for path in layout.binaries().values() if not path.exists()]
    for ref in (PAUSE_IMAGE, COREDNS_IMAGE, KUBERAY_IMAGE):
        if not any(image_cache().glob(f"{_slug(ref)}-*.oci.tar")):
            absent.append(f"image {ref}")
    return absent


if __name__ == "__main__":
    if sys.argv[1:] == ["--check"]:
        absent = missing()
        print("node: everything cached" if not absent else f"node: not built yet: {', '.join(absent)}")
        sys.exit(1 if absent else 0)
    build()
