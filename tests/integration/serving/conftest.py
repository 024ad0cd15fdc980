"""One real Ray + Serve + vLLM (CPU build) on 127.0.0.1 for all serving integration tests.

The session renders docs/examples/bigmodel-tiny-cpu.yaml the way `bigmodel serve` does (the operator's
`render_application`, adjusted for one CPU replica), with the tiny offline model, its LoRA adapter,
three named keys and a per-key quota, and deploys it once through Serve's declarative API (the path
KubeRay uses). Starting Ray and the engine takes minutes on a 2-core machine, so every test shares it;
tests that change the deployment restore it.
"""

from __future__ import annotations

import copy
import os
import secrets
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "docs" / "examples" / "bigmodel-tiny-cpu.yaml"
MODEL = "tiny-llama"
ADAPTER = "lora"
LIMITED_RPM = 3
# vLLM on CPU: a fixed KV cache instead of a fraction of host RAM (the test machine's RAM varies).
KV_CACHE_BYTES = 64 * 1024 * 1024


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The first test also waits for Ray and the engine to start: minutes on a loaded 2-core machine.
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.timeout(1800))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class ServingStack:
    url: str
    keys_dir: Path
    keys: dict[str, str]
    application: dict[str, Any]
    server: Any = field(repr=False)
    feedback_dir: Path | None = None  # the feedback sink (test_serving_feedback.py)
    # The Ray processes' BIGMODEL_KUBECONFIG (in a pod: the `<bigmodel>-serving` ServiceAccount): where the
    # canary actor reports automatic decisions from. Absent until a test writes one (test_serving_loop.py).
    report_kubeconfig: Path | None = None

    @property
    def api_key(self) -> str:
        return self.keys["alice"]

    def http(self, key: str | None = None) -> httpx.Client:
        """An httpx client sending `key` (default alice's) as the bearer token; `""` sends none."""
        key = self.api_key if key is None else key
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=120)

    @property
    def metrics_url(self) -> str:
        """GET /metrics of the metrics deployment (its own port, not the serving port)."""
        return str(self.server.metrics_urls[self.application["name"]])

    def metrics(self) -> str:
        response = httpx.get(self.metrics_url, timeout=60)
        assert response.status_code == 200, response.text
        return response.text

    def openai(self, key: str | None = None) -> Any:
        import openai

        return openai.OpenAI(base_url=f"{self.url}/v1", api_key=key or self.api_key, timeout=120, max_retries=0)

    def redeploy(self, application: dict[str, Any]) -> None:
        self.server.deploy([application])


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path) -> Path:
    from bigmodel_training.tinymodel import make_tiny_lora_adapter

    return make_tiny_lora_adapter(tiny_model_dir, tiny_model_dir.parent / f"{tiny_model_dir.name}-lora-test")


def tiny_application(model_dir: Path, adapter_dir: Path, keys_dir: Path) -> dict[str, Any]:
    """What `bigmodel serve` runs for the tiny example, pointed at the test's model, adapter and keys."""
    from bigmodel_operator.local import local_application

    manifest = yaml.safe_load(EXAMPLE.read_text())
    spec = manifest["spec"]
    spec["model"]["uri"] = model_dir.as_uri()
    spec["model"].pop("config", None)  # the planner reads the real config.json
    spec["adapters"] = [{"name": ADAPTER, "uri": adapter_dir.as_uri(), "rank": 4}]
    spec["auth"] = {"quotas": {"keys": {"limited": {"requestsPerMinute": LIMITED_RPM}}}}
    app = local_application(manifest, str(keys_dir))
    engine_args = app["args"]["engine_args"]
    engine_args["max_num_seqs"] = 8
    # The tool-call parser is the operator's choice for the tiny Llama's family (hermes: no llama3 rope).
    assert engine_args["extra"] == {"enable_auto_tool_choice": True, "tool_call_parser": "hermes"}
    engine_args["extra"] = {
        **engine_args["extra"],
        "kv_cache_memory_bytes": KV_CACHE_BYTES,
        # A random model under a JSON grammar may emit whitespace until max_tokens; this keeps its
        # structured outputs (json_schema, tools) short and complete.
        "structured_outputs_config": {"backend": "xgrammar", "disable_any_whitespace": True},
    }
    app["args"]["metrics"] = {"host": "127.0.0.1", "port": _free_port()}  # the metrics deployment's own port
    engine = next(d for d in app["deployments"] if d["name"] == "BigModelEngine")
    engine["max_ongoing_requests"] = 8
    engine["max_queued_requests"] = 16
    return app


@pytest.fixture(scope="session")
def serving(
    tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory, s3_server: Any
) -> Iterator[ServingStack]:
    from bigmodel_serving.local import run_local

    keys_dir = tmp_path_factory.mktemp("api-keys")
    keys = {name: f"sk-{name}-{secrets.token_hex(8)}" for name in ("alice", "bob", "limited")}
    for name, key in keys.items():
        (keys_dir / name).write_text(key + "\n")
    application = tiny_application(tiny_model_dir, tiny_adapter_dir, keys_dir)
    feedback_dir = tmp_path_factory.mktemp("feedback")
    ingress = next(d for d in application["deployments"] if d["name"] == "BigModelIngress")
    ingress["user_config"]["feedback"] = {"enabled": True, "sink_path": str(feedback_dir)}
    # The storage Secret's variables, as a pod has them: Ray's workers inherit them (test_serving_s3.py).
    os.environ.update(s3_server.env())
    os.environ["BIGMODEL_S3_CACHE"] = str(tmp_path_factory.mktemp("s3-cache"))
    # The Ray processes' identity for reports to Kubernetes, as a pod's ServiceAccount: set while Ray starts
    # (its processes keep it), then taken back so that nothing else in this process (a trainer) uses it.
    report_kubeconfig = tmp_path_factory.mktemp("serving-identity") / "kubeconfig"
    os.environ["BIGMODEL_KUBECONFIG"] = str(report_kubeconfig)
    try:
        server = run_local(application, port=_free_port(), block=False, num_cpus=4)
    finally:
        os.environ.pop("BIGMODEL_KUBECONFIG", None)
    try:
        yield ServingStack(
            server.url, keys_dir, keys, copy.deepcopy(application), server, feedback_dir, report_kubeconfig
        )
    finally:
        server.shutdown()
