"""The product end to end, with real containers: serve the tiny CPU model and fine-tune it.

Run by tests/e2e/kind.sh (`make e2e-kind`), or on any cluster with KubeRay and the chart installed:
`BIGMODEL_TEST_CLUSTER=existing BIGMODEL_E2E_SERVING_CPU_IMAGE=<serving-cpu image> pytest tests/e2e`.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "docs" / "examples"
# The CPU serving image bakes the tiny model here (serving/Dockerfile.cpu): /tmp would be hidden by the
# emptyDir the RayService pods mount on /tmp.
MODEL_URI = os.environ.get("BIGMODEL_E2E_MODEL_URI", "file:///opt/bigmodel/tiny-llama")
SERVING_CPU_IMAGE = os.environ.get("BIGMODEL_E2E_SERVING_CPU_IMAGE", "ghcr.io/bigmodel-operator/serving-cpu:0.1.0")
READY_TIMEOUT = float(os.environ.get("BIGMODEL_E2E_TIMEOUT", "900"))


def _wait(fn: Callable[[], Any], timeout: float, what: str, interval: float = 5) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = fn()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout:.0f}s waiting for {what}; last: {result!r}"
        time.sleep(interval)


def _get(kubectl: Callable[..., Any], namespace: str, kind: str, name: str) -> dict[str, Any]:
    proc = kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(proc.stdout) if proc.returncode == 0 else {}


def _condition(obj: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in (obj.get("status") or {}).get("conditions") or [] if c["type"] == type_), {})


@pytest.fixture
def port_forward(kubectl: Callable[..., Any]) -> Iterator[Callable[[str, str, int], int]]:
    """port_forward(namespace, "svc/name", remote_port) -> a local port on 127.0.0.1."""
    procs: list[subprocess.Popen[str]] = []

    def forward(namespace: str, target: str, remote: int) -> int:
        argv = ["kubectl", "port-forward", "-n", namespace, target, f"0:{remote}", "--address=127.0.0.1"]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        procs.append(proc)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        match = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert match, f"kubectl port-forward said: {line}"
        return int(match[1])

    yield forward
    for proc in procs:
        proc.terminate()
        proc.wait(timeout=10)


def test_cpu_bigmodel_answers_a_chat_completion(
    kubectl: Callable[..., Any], namespace: str, port_forward: Callable[[str, str, int], int]
) -> None:
    import httpx

    body = yaml.safe_load((EXAMPLES / "bigmodel-tiny-cpu.yaml").read_text())
    body["spec"]["model"]["uri"] = MODEL_URI
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(body))

    def ready() -> Any:
        bm = _get(kubectl, namespace, "bigmodel", "tiny-cpu")
        return _condition(bm, "Ready").get("status") == "True" and bm

    bm = _wait(ready, READY_TIMEOUT, "BigModel tiny-cpu Ready")
    assert bm["status"]["url"].endswith("/v1")
    port = port_forward(namespace, "svc/tiny-cpu-serve-svc", 8000)
    request = {"model": "tiny-llama", "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 8}
    response = httpx.post(f"http://127.0.0.1:{port}/v1/chat/completions", json=request, timeout=120)
    assert response.status_code == 200, response.text
    answer = response.json()
    assert isinstance(answer["choices"][0]["message"]["content"], str)
    assert answer["usage"]["completion_tokens"] >= 1


def _prepare_data_job(namespace: str) -> list[dict[str, Any]]:
    """A PVC with the tiny model (copied out of the serving-cpu image) and a small chat dataset."""
    rows = [
        {
            "messages": [
                {"role": "user", "content": f"What is {i} plus {i}?"},
                {"role": "assistant", "content": str(2 * i)},
            ]
        }
        for i in range(64)
    ]
    seed = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "e2e-seed", "namespace": namespace},
        "data": {"chats.jsonl": "".join(json.dumps(row) + "\n" for row in rows)},
    }
    pvc = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "e2e-data", "namespace": namespace},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}},
    }
    container = {
        "name": "prepare",
        "image": SERVING_CPU_IMAGE,
        "command": ["bash", "-c", "set -e; cp -r /opt/bigmodel/tiny-llama /data/model; cp /seed/chats.jsonl /data/"],
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "seed", "mountPath": "/seed"}],
    }
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "e2e-data", "namespace": namespace},
        "spec": {
            "backoffLimit": 0,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000},
                    "containers": [container],
                    "volumes": [
                        {"name": "data", "persistentVolumeClaim": {"claimName": "e2e-data"}},
                        {"name": "seed", "configMap": {"name": "e2e-seed"}},
                    ],
                }
            },
        },
    }
    return [seed, pvc, job]


def test_cpu_finetunejob_succeeds(kubectl: Callable[..., Any], namespace: str) -> None:
    kubectl("apply", "-f", "-", input=yaml.safe_dump_all(_prepare_data_job(namespace)))
    kubectl("wait", "-n", namespace, "job/e2e-data", "--for=condition=Complete", "--timeout=600s", timeout=620)
    tiny = yaml.safe_load((EXAMPLES / "bigmodel-tiny-cpu.yaml").read_text())["spec"]["model"]["config"]
    ftj = {
        "apiVersion": "bigmodel.io/v1alpha1",
        "kind": "FineTuneJob",
        "metadata": {"name": "tiny-lora"},
        "spec": {
            "baseModel": {"uri": "pvc://e2e-data/model", "config": tiny},
            "dataset": {"uri": "pvc://e2e-data/chats.jsonl", "format": "chat"},
            "method": {"type": "lora", "rank": 4},
            "hyperparameters": {"epochs": 1, "maxSteps": 4, "batchSize": 4, "maxSeqLength": 128},
            "resources": {"gpu": {"count": 0}, "cpu": 2, "memory": "4Gi"},
            "output": {"uri": "pvc://e2e-data/adapters/tiny-lora"},
        },
    }
    kubectl("apply", "-n", namespace, "-f", "-", input=yaml.safe_dump(ftj))

    def finished() -> Any:
        phase = (_get(kubectl, namespace, "finetunejob", "tiny-lora").get("status") or {}).get("phase")
        return phase in {"Succeeded", "Failed"} and phase

    phase = _wait(finished, READY_TIMEOUT, "FineTuneJob tiny-lora to finish")
    done = _get(kubectl, namespace, "finetunejob", "tiny-lora")
    assert phase == "Succeeded", json.dumps(done.get("status"), indent=2)
    assert done["status"]["adapterUri"] == "pvc://e2e-data/adapters/tiny-lora"
    assert _condition(done, "Complete")["status"] == "True"
