"""Build the chart tests' tools into the same cache as the control plane: helm and checkov.

helm comes from the Go module proxy (``go install helm.sh/helm/v3/cmd/helm@HELM_VERSION``, checked
against sum.golang.org); checkov comes from PyPI into its own virtual environment (its pins would
downgrade packages of the project's venv). Outputs live under
``$BIGMODEL_CACHE_DIR/k8s/helm-<version>/bin/helm`` and ``.../checkov-<version>/bin/checkov``; a
directory counts once its ``.complete`` marker exists. Run as a script to build both and print where.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import clusterbuild  # noqa: E402  (sibling module, not a package)

HELM_VERSION = "v3.22.0"
CHECKOV_VERSION = "3.3.30"


def helm_path() -> Path:
    return clusterbuild.cache_root() / f"helm-{HELM_VERSION}" / "bin" / "helm"


def checkov_path() -> Path:
    return clusterbuild.cache_root() / f"checkov-{CHECKOV_VERSION}" / "bin" / "checkov"


def build_helm() -> Path:
    """helm, built from source once (about 3 minutes with an empty Go cache on 2 cores)."""
    if shutil.which("go") is None:
        raise SystemExit("Go is needed to build helm (https://go.dev/dl/)")
    target = helm_path()
    out_dir = target.parent.parent
    root = clusterbuild.cache_root()
    ldflags = f"-s -w -X helm.sh/helm/v3/internal/version.version={HELM_VERSION}"

    def install() -> None:
        (root / "scratch").mkdir(exist_ok=True)
        clusterbuild._run(
            ["go", "install", "-trimpath", "-ldflags", ldflags, f"helm.sh/helm/v3/cmd/helm@{HELM_VERSION}"],
            root / "scratch",
            clusterbuild._go_env({"GOBIN": str(target.parent)}),
        )

    with clusterbuild._locked(root):
        clusterbuild._step(f"helm {HELM_VERSION}", out_dir, [target], install)
    return target


def build_checkov() -> Path:
    """checkov in its own venv, made with the project venv's uv (seconds when uv's cache is warm)."""
    target = checkov_path()
    out_dir = target.parent.parent
    uv = Path(sys.executable).parent / "uv"
    if not uv.exists():
        raise SystemExit(f"no uv next to {sys.executable}: run `make dev`")
    root = clusterbuild.cache_root()

    def install() -> None:
        clusterbuild._run(
            [str(uv), "venv", "--quiet", "--python", sys.executable, str(out_dir)], root, dict(os.environ)
        )
        python = str(out_dir / "bin" / "python")
        clusterbuild._run(
            [str(uv), "pip", "install", "--quiet", "--python", python, f"checkov=={CHECKOV_VERSION}"],
            root,
            dict(os.environ),
        )

    with clusterbuild._locked(root):
        clusterbuild._step(f"checkov {CHECKOV_VERSION}", out_dir, [target], install)
    return target


if __name__ == "__main__":
    print(build_helm())
    print(build_checkov())
