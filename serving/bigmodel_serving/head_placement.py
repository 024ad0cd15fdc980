"""Where the application's long-lived parts run: on the Ray head, which scale to zero keeps.

With scale to zero, a worker pod goes once its engine replica stopped; anything else placed there would
go with it. The ingress replicas (0 CPUs, so Ray may place them on any node) and the application's
detached actors (quotas and usage, feedback, canary) are therefore pinned to the head node on KubeRay,
through the node label Ray sets from KubeRay's group name (`ray.io/node-group`, from the pod's
RAY_NODE_TYPE_NAME; KubeRay calls the head group `headgroup`). Outside KubeRay (`bigmodel serve`, tests)
there is no such label and nothing is pinned.
"""

from __future__ import annotations

import os
from typing import Any

NODE_TYPE_ENV = "RAY_NODE_TYPE_NAME"
NODE_GROUP_LABEL = "ray.io/node-group"
KUBERAY_HEAD_GROUP = "headgroup"


def head_pinning() -> dict[str, Any]:
    """Ray actor options that keep an actor on the head node of a KubeRay cluster (empty elsewhere)."""
    if not os.environ.get(NODE_TYPE_ENV):
        return {}
    return {"label_selector": {NODE_GROUP_LABEL: KUBERAY_HEAD_GROUP}}
