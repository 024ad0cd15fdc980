"""BigModel names against KubeRay's own rule: the CRD admits exactly the names KubeRay v1.6.0's
ValidateRayServiceMetadata accepts (at most 40 characters, our own bound), run as Go code from its module.

The checker (kuberay_names/main.go) is built once with the Go toolchain the control-plane build uses and
cached next to the other binaries; without Go the test is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from bigmodel_operator.reconcile.spec_checks import name_problem

from .conftest import GROUP, VERSION, load_example

SOURCE = Path(__file__).parent / "kuberay_names"
CACHE = Path(os.environ.get("BIGMODEL_CACHE_DIR", Path.home() / ".cache" / "bigmodel" / "k8s"))
BINARY = CACHE / "kuberay-names-v1.6.0" / "bin" / "kuberay-names"

NAMES = [
    "llama-3-1-8b",
    "llama-3.1-8b",
    "8b-chat",
    "chat-8b",
    "a",
    "z9",
    "Llama",
    "chat-",
    "-chat",
    "a_b",
    "a--b",
    "m" * 40,
    "qwen2.5-7b",
    "x" * 39 + "-",
]


def _checker() -> Path:
    if BINARY.exists():
        return BINARY
    go = shutil.which("go")
    if go is None:
        pytest.skip("no Go toolchain: KubeRay's own validation cannot be built")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([go, "build", "-o", str(BINARY), "."], cwd=SOURCE, check=True, timeout=1800)
    return BINARY


def kuberay_verdicts(names: list[str]) -> dict[str, bool]:
    out = subprocess.run(
        [str(_checker())], input="\n".join(names) + "\n", capture_output=True, text=True, check=True, timeout=60
    ).stdout
    verdicts = {}
    for line in out.splitlines():
        word, _, rest = line.partition(" ")
        verdicts[rest.split(":", 1)[0]] = word == "ok"
    return verdicts


def test_the_crd_admits_exactly_the_names_kuberay_accepts(custom: Any, namespace: str) -> None:
    from kubernetes.client.rest import ApiException

    kuberay = kuberay_verdicts(NAMES)
    assert set(kuberay) == set(NAMES)
    for name in NAMES:
        body = load_example("bigmodel-tiny-cpu.yaml")
        body["metadata"] = {"name": name}
        refusal = ""
        try:
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, "bigmodels", body)
        except ApiException as error:
            refusal = f"{error.status} {error.body}"
        admitted = not refusal
        assert admitted or ("422" in refusal and "metadata.name" in refusal), refusal
        assert admitted == kuberay[name], f"{name!r}: CRD admits={admitted}, KubeRay accepts={kuberay[name]}"
        assert (name_problem(name) is None) == kuberay[name], name
