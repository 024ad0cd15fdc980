"""Both sides' S3 code against the real S3 server on 127.0.0.1 (no Ray, no model): serving downloads
an adapter folder once, its feedback sink writes records the trainer's reader finds, and a wrong
secret is refused by the server's signature check with a message that names the Secret."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest

from bigmodel_serving import storage as serving_storage
from bigmodel_training import storage as training_storage
from bigmodel_training.errors import SourceError


@pytest.fixture
def s3_env(s3_server: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    for key, value in s3_server.env().items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("BIGMODEL_S3_CACHE", str(tmp_path / "cache"))
    return s3_server


def test_serving_downloads_a_folder_once(s3_env: Any, tmp_path: Path) -> None:
    s3 = s3_env.client()
    prefix = f"adapters-{secrets.token_hex(4)}/v1"
    files = {"adapter_config.json": b'{"r": 4}', "adapter_model.safetensors": b"\0" * 70_000, "sub/x.txt": b"x"}
    for name, body in files.items():
        s3.put_object(Bucket="bigmodel-models", Key=f"{prefix}/{name}", Body=body)
    local = serving_storage.fetch_dir(f"s3://bigmodel-models/{prefix}")
    found = {p.relative_to(local).as_posix(): p.read_bytes() for p in local.rglob("*") if p.is_file()}
    # Besides the files: the completion marker and the weight cache's last-use stamp (its LRU eviction).
    assert {name: body for name, body in found.items() if name not in {".complete", ".last-used"}} == files
    assert ".complete" in found
    s3.delete_object(Bucket="bigmodel-models", Key=f"{prefix}/sub/x.txt")
    assert serving_storage.fetch_dir(f"s3://bigmodel-models/{prefix}") == local  # cached: no second listing
    with pytest.raises(serving_storage.StorageError, match="no objects"):
        serving_storage.fetch_dir(f"s3://bigmodel-models/{prefix}-missing")


def test_feedback_sink_records_reach_the_trainers_reader(s3_env: Any, tmp_path: Path) -> None:
    sink_uri = f"s3://bigmodel-data/feedback-{secrets.token_hex(4)}/support-bot"
    sink = serving_storage.S3Sink(sink_uri)
    records = [
        {"id": f"chatcmpl-{i}", "rating": i, "messages": [{"role": "user", "content": "hi"}], "model": "m"}
        for i in range(3)
    ]
    for record in records:
        sink.append(record)
    local = training_storage.download_prefix(sink_uri, tmp_path / "sink", ["*.jsonl"])
    lines = [json.loads(line) for path in sorted(local.rglob("*.jsonl")) for line in path.read_text().splitlines()]
    assert sorted(lines, key=lambda r: r["id"]) == records


def test_wrong_secret_is_refused_on_both_sides(s3_env: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "not-the-secret")
    with pytest.raises(serving_storage.StorageError, match="storage Secret"):
        serving_storage.S3Sink("s3://bigmodel-data/x").append({"id": "a"})
    with pytest.raises(SourceError, match="storage Secret"):
        training_storage.list_objects("s3://bigmodel-data/x")


def test_engine_adapter_loader_downloads_s3_adapters(s3_env: Any) -> None:
    """The replica's loader (without Ray): an s3:// adapter resolves to its downloaded folder; a prefix
    with nothing under it is a 503, not a crash."""
    import asyncio

    from fastapi import HTTPException

    from bigmodel_serving.engine import MountedAdapterLoader

    prefix = f"engine-{secrets.token_hex(4)}/lora"
    s3_env.client().put_object(Bucket="bigmodel-models", Key=f"{prefix}/adapter_config.json", Body=b"{}")
    paths = {"m:a": f"s3://bigmodel-models/{prefix}", "m:gone": f"s3://bigmodel-models/{prefix}-gone"}
    loader = type("Loader", (MountedAdapterLoader,), {"paths": paths})()
    loaded = asyncio.run(loader.load_model_from_config("m:a", llm_config=None))
    assert (Path(loaded.local_path) / "adapter_config.json").read_bytes() == b"{}"
    with pytest.raises(HTTPException) as gone:
        asyncio.run(loader.load_model_from_config("m:gone", llm_config=None))
    assert gone.value.status_code == 503


def test_engine_downloads_an_s3_model_before_vllm_loads_it(s3_env: Any, tiny_model_dir: Path) -> None:
    """An s3:// model_source becomes the local folder the replica downloaded (what vLLM then loads)."""
    import asyncio

    from ray.serve.llm import LLMConfig

    from bigmodel_serving.engine import _download_s3_model
    from bigmodel_serving.startup_report import StartupTimeline

    prefix = f"model-{secrets.token_hex(4)}/tiny"
    s3 = s3_env.client()
    for path in tiny_model_dir.iterdir():
        if path.is_file():
            s3.upload_file(str(path), "bigmodel-models", f"{prefix}/{path.name}")
    config = LLMConfig(model_loading_config={"model_id": "tiny", "model_source": f"s3://bigmodel-models/{prefix}"})
    timeline = StartupTimeline(pod=None, constructed=0.0)
    asyncio.run(_download_s3_model(config, timeline))
    local = Path(config.model_loading_config.model_source)
    download = next(phase for phase in timeline.phases if phase.name == "Downloading")
    assert download.source == "download"
    assert (local / "config.json").read_bytes() == (tiny_model_dir / "config.json").read_bytes()
