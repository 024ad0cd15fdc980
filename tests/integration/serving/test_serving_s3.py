"""An adapter served from s3:// (the real S3 server on 127.0.0.1): added by a light edit, downloaded by
the replica on first use, answering exactly like the same adapter from disk, with no replica restart."""

from __future__ import annotations

import copy
import secrets
from pathlib import Path
from typing import Any

from ray import serve

from bigmodel_serving.args import ENGINE_DEPLOYMENT, INGRESS_DEPLOYMENT

from .conftest import ADAPTER, MODEL, ServingStack


def _replicas(app_name: str) -> list[dict[str, Any]]:
    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=app_name)
    return sorted(handle.broadcast("replica_info").results(), key=lambda info: info["replica_id"])


def _with_adapters(application: dict[str, Any], extra: list[dict[str, Any]]) -> dict[str, Any]:
    edited = copy.deepcopy(application)
    for deployment in edited["deployments"]:
        if deployment["name"] in (INGRESS_DEPLOYMENT, ENGINE_DEPLOYMENT):
            deployment["user_config"]["adapters"] = [*deployment["user_config"]["adapters"], *extra]
    return edited


def test_adapter_from_s3_answers_like_the_same_adapter_from_disk(
    serving: ServingStack, s3_server: Any, tiny_adapter_dir: Path
) -> None:
    prefix = f"serving-{secrets.token_hex(4)}/lora"
    s3 = s3_server.client()
    for path in tiny_adapter_dir.iterdir():
        if path.is_file():
            s3.upload_file(str(path), "bigmodel-models", f"{prefix}/{path.name}")
    app_name = serving.application["name"]
    before = _replicas(app_name)
    edited = _with_adapters(
        serving.application,
        [
            {"name": "from-s3", "uri": f"s3://bigmodel-models/{prefix}"},
            {"name": "missing", "uri": f"s3://bigmodel-models/{prefix}-not-there"},
        ],
    )
    try:
        serving.redeploy(edited)
        client = serving.openai()
        ids = [m.id for m in client.models.list().data]
        assert f"{MODEL}:from-s3" in ids
        prompt = {"prompt": "Numbers like", "max_tokens": 8, "temperature": 0}
        from_disk = client.completions.create(model=f"{MODEL}:{ADAPTER}", **prompt)
        from_s3 = client.completions.create(model=f"{MODEL}:from-s3", **prompt)
        assert from_s3.model == f"{MODEL}:from-s3"
        assert from_s3.choices[0].text == from_disk.choices[0].text
        with serving.http() as http:
            missing = http.post("/v1/completions", json={"model": f"{MODEL}:missing", **prompt})
            assert missing.status_code >= 400, missing.text  # the adapter's objects are not in the bucket
            assert http.post("/v1/completions", json={"model": MODEL, **prompt}).status_code == 200
        assert _replicas(app_name) == before  # no engine restart: the same replica loaded it
    finally:
        serving.redeploy(serving.application)
