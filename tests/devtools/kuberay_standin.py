"""What KubeRay would write, for the places that run the operator without KubeRay (the demo, the
controller integration tests): KubeRay itself would dial pod addresses, which these clusters must not."""

from __future__ import annotations

from typing import Any


def kuberay_serving_status(name: str, workers: int = 1) -> dict[str, Any]:
    """The RayService status KubeRay writes once the Serve application runs (KubeRay itself is not run
    here: it would dial pod addresses). Shared with the integration tests."""
    return {
        "serviceStatus": "Running",
        "numServeEndpoints": workers,
        "conditions": [
            {
                "type": "Ready",
                "status": "True",
                "reason": "NonZeroServeEndpoints",
                "message": "",
                "lastTransitionTime": "2026-01-01T00:00:00Z",
            }
        ],
        "activeServiceStatus": {
            "rayClusterName": f"{name}-abcde",
            "applicationStatuses": {name: {"status": "RUNNING", "serveDeploymentStatuses": {}}},
            "rayClusterStatus": {"readyWorkerReplicas": workers, "desiredWorkerReplicas": workers},
        },
    }
