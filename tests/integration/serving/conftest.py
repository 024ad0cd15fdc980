"""One real Ray + Serve on 127.0.0.1 for all serving integration tests (no Kubernetes needed).

The session starts Ray and Serve once through `run_local` (the code path of `bigmodel serve`) with
the tiny offline model, its LoRA adapter and an API-keys file at `/`, and a stub-engine app with
small limits and a slow first token (2 s) at `/stub`. Everything is shut down at the end of the session.
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

API_KEY = "test-key-1"
TINY_MAX_MODEL_LEN = 128


@dataclass(frozen=True)
class ServingStack:
    url: str  # the tiny transformers app (auth on)
    stub_url: str  # the stub app (auth off, max 1 ongoing + 1 queued, slow tokens)
    keys_file: Path
    tiny_args: dict[str, Any]
    api_key: str = API_KEY

    def client(self, key: str | None = API_KEY, base: str | None = None) -> httpx.Client:
        """An httpx client for the tiny app (or `base`), sending `key` as the bearer token."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=base or self.url, headers=headers, timeout=60)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def tiny_adapter_dir(tiny_model_dir: Path) -> Path:
    from bigmodel_training.tinymodel import make_tiny_lora_adapter

    return make_tiny_lora_adapter(tiny_model_dir, tiny_model_dir.parent / "tiny-llama-v1-lora-test")


@pytest.fixture(scope="session")
def serving(
    tiny_model_dir: Path, tiny_adapter_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServingStack]:
    from ray import serve

    from bigmodel_serving.app import build_app
    from bigmodel_serving.engines.stub import StubEngineFactory
    from bigmodel_serving.local import run_local

    keys_file = tmp_path_factory.mktemp("keys") / "keys"
    keys_file.write_text(f"# test keys\n{API_KEY}\n")
    tiny_args: dict[str, Any] = {
        "model": {"uri": tiny_model_dir.as_uri(), "served_name": "tiny"},
        "engine": "transformers",
        "engine_args": {"max_model_len": TINY_MAX_MODEL_LEN},
        "adapters": [{"name": "lora", "uri": tiny_adapter_dir.as_uri()}],
        "auth": {"api_keys_file": str(keys_file)},
        "limits": {"max_body_bytes": 65_536, "max_n": 2, "request_timeout_s": 60},
        "replica_resources": {"num_cpus": 0.5},
    }
    server = run_local(tiny_args, port=_free_port(), block=False, num_cpus=4)
    try:
        stub_args = {
            "model": {"uri": "file:///nonexistent", "served_name": "stub"},
            "engine": "transformers",
            "limits": {"max_ongoing_requests": 1, "max_queued_requests": 1, "request_timeout_s": 30},
            "replica_resources": {"num_cpus": 0.5},
        }
        stub_app = build_app(stub_args, engine_factory=StubEngineFactory(ttft_s=2.0, per_token_s=0.01))
        serve.run(stub_app, name="stub", route_prefix="/stub")
        yield ServingStack(url=server.url, stub_url=f"{server.url}/stub", keys_file=keys_file, tiny_args=tiny_args)
    finally:
        server.shutdown()
