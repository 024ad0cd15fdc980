"""Engine replicas, desired and ready, from what Serve reports through the RayService (pure).

KubeRay copies each Serve deployment's status and message into the RayService
(`activeServiceStatus.applicationStatuses.<app>.serveDeploymentStatuses.BigModelEngine`). Serve's autoscaler
says what it does there: `UPSCALING` / `DOWNSCALING` with "Upscaling from 1 to 2 replicas." while replicas
start or drain, `HEALTHY` once the running replicas are the target. So:

- desired = Serve's target: the "to" of the last Upscaling/Downscaling message seen (kept in status.replicas
  between messages), clamped to the spec's bounds; fixed `replicas` when the spec says so;
- ready = the replicas that run: the "from" while upscaling (the new ones still start), the target while
  downscaling (the old ones only drain) and once HEALTHY, never more than the Ray worker pods that are ready
  can host.

A scale that starts and finishes between two of KubeRay's status updates (every few seconds) is seen only as
its end; the desired count then follows the worker pods (the Ray autoscaler's count) until Serve reports again.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

ENGINE_DEPLOYMENT = "BigModelEngine"
_SCALING = re.compile(r"(Upscaling|Downscaling) from (\d+) to (\d+) replicas")


@dataclass(frozen=True)
class EngineReplicas:
    desired: int
    ready: int
    scaling: tuple[int, int] | None  # (from, to) while Serve adds or removes replicas
    state: str  # Serve's deployment status, "" when not reported


def engine_deployment_status(rayservice: dict[str, Any] | None, app: str) -> tuple[str, str]:
    """(status, message) of the engine deployment as KubeRay reports it; ("", "") when it does not (yet)."""
    active = ((rayservice or {}).get("status") or {}).get("activeServiceStatus") or {}
    application = (active.get("applicationStatuses") or {}).get(app) or {}
    deployment = (application.get("serveDeploymentStatuses") or {}).get(ENGINE_DEPLOYMENT) or {}
    return str(deployment.get("status") or ""), str(deployment.get("message") or "")


def engine_replicas(
    rayservice: dict[str, Any] | None,
    app: str,
    *,
    bounds: tuple[int, int],
    fixed: int | None,
    previous_desired: int | None,
    ready_pods: int | None,
    pods_per_replica: int,
) -> EngineReplicas:
    """Desired and ready engine replicas (see the module docstring). `bounds` are (min, max) replicas."""
    low, high = bounds
    state, message = engine_deployment_status(rayservice, app)
    match = _SCALING.search(message) if state in ("UPSCALING", "DOWNSCALING") else None
    scaling = (int(match[2]), int(match[3])) if match else None
    if fixed is not None:
        desired = fixed
    elif scaling is not None:
        desired = scaling[1]
    elif previous_desired is not None:
        desired = previous_desired
    else:
        desired = low
    desired = max(low, min(high, desired)) if fixed is None else desired
    if scaling is not None:
        ready = min(scaling)
    elif state == "HEALTHY":
        ready = desired
    else:
        ready = 0 if state in ("", "UPDATING", "DEPLOY_FAILED") else min(desired, previous_desired or 0)
    if ready_pods is not None:
        ready = min(ready, ready_pods // max(1, pods_per_replica))
    return EngineReplicas(desired=desired, ready=max(0, ready), scaling=scaling, state=state)


def scale_reason(change: tuple[int, int], bounds: tuple[int, int], target: float) -> str:
    """Why Serve changed the replica count: a bound moved, or its autoscaler followed the load."""
    before, after = change
    low, high = bounds
    if after > before and after == low:
        return f"spec.scaling.minReplicas is {low}"
    if after < before and after == high:
        return f"spec.scaling.maxReplicas is {high}"
    side = "above" if after > before else "below"
    return f"ongoing requests per replica {side} targetOngoingRequests ({target:g}); autoscaling {low}..{high}"
