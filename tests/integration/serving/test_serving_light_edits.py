"""Light edits do not reload the model: Serve applies deployment options and user_config in place.

Redeploys the running application through Serve's declarative API (what KubeRay does when the
RayService's serveConfigV2 changes) with new autoscaling bounds, a new quota and a new adapter
list, and checks that the engine replica is the same actor whose model loaded once.
"""

from __future__ import annotations

import copy
from typing import Any

from ray import serve

from bigmodel_serving.args import ENGINE_DEPLOYMENT, INGRESS_DEPLOYMENT

from .conftest import MODEL, ServingStack


def _engine_replicas(app_name: str) -> list[dict[str, Any]]:
    handle = serve.get_deployment_handle(ENGINE_DEPLOYMENT, app_name=app_name)
    return sorted(handle.broadcast("replica_info").results(), key=lambda info: info["replica_id"])


def test_autoscaling_keys_quotas_and_adapters_change_in_place(serving: ServingStack) -> None:
    app_name = serving.application["name"]
    before = _engine_replicas(app_name)
    edited = copy.deepcopy(serving.application)
    for deployment in edited["deployments"]:
        deployment["autoscaling_config"]["max_replicas"] = 2  # min stays 1: no new replica needed
        if deployment["name"] == INGRESS_DEPLOYMENT:
            deployment["user_config"]["quotas"] = {"default": {"requests_per_minute": 1000}}
            deployment["user_config"]["adapters"] = []
        if deployment["name"] == ENGINE_DEPLOYMENT:
            deployment["user_config"]["adapters"] = []
    try:
        serving.redeploy(edited)
        after = _engine_replicas(app_name)
        assert after == before  # same replica id, same process, loaded at the same time
        with serving.http() as client:
            assert [m["id"] for m in client.get("/v1/models").json()["data"]] == [MODEL]
    finally:
        serving.redeploy(serving.application)
    assert _engine_replicas(app_name) == before
