"""status.replicas / readyReplicas / lastScaled from Serve's engine deployment status in the RayService."""

from __future__ import annotations

from typing import Any

from bigmodel_operator.status.engine_replicas import engine_replicas, scale_reason


def _rayservice(state: str, message: str = "", ready_pods: int | None = 2) -> dict[str, Any]:
    engine = {"status": state, "message": message}
    cluster = {} if ready_pods is None else {"readyWorkerReplicas": ready_pods}
    return {
        "status": {
            "activeServiceStatus": {
                "applicationStatuses": {
                    "tiny": {"status": "RUNNING", "serveDeploymentStatuses": {"BigModelEngine": engine}}
                },
                "rayClusterStatus": cluster,
            }
        }
    }


def _engines(rs: dict[str, Any] | None, previous: int | None = 1, fixed: int | None = None) -> Any:
    return engine_replicas(
        rs, "tiny", bounds=(1, 3), fixed=fixed, previous_desired=previous, ready_pods=None, pods_per_replica=1
    )


def test_upscaling_counts_the_running_replicas_as_ready_and_the_target_as_desired() -> None:
    engines = _engines(_rayservice("UPSCALING", "Upscaling from 1 to 2 replicas."))
    assert (engines.desired, engines.ready, engines.scaling) == (2, 1, (1, 2))


def test_downscaling_counts_the_target() -> None:
    engines = _engines(_rayservice("DOWNSCALING", "Downscaling from 2 to 1 replicas."), previous=2)
    assert (engines.desired, engines.ready, engines.scaling) == (1, 1, (2, 1))


def test_healthy_keeps_the_last_target_within_the_bounds() -> None:
    assert (_engines(_rayservice("HEALTHY"), previous=2).desired, _engines(_rayservice("HEALTHY"), 2).ready) == (2, 2)
    assert _engines(_rayservice("HEALTHY"), previous=7).desired == 3
    assert _engines(_rayservice("HEALTHY"), previous=None).desired == 1


def test_ready_pods_bound_the_ready_replicas() -> None:
    engines = engine_replicas(
        _rayservice("HEALTHY"), "tiny", bounds=(1, 3), fixed=None, previous_desired=3, ready_pods=4, pods_per_replica=2
    )
    assert (engines.desired, engines.ready) == (3, 2)


def test_fixed_replicas_and_unknown_state() -> None:
    assert _engines(_rayservice("HEALTHY"), fixed=2).desired == 2
    unknown = _engines(None)
    assert (unknown.state, unknown.ready) == ("", 0)


def test_scale_reasons() -> None:
    assert "above targetOngoingRequests (4)" in scale_reason((1, 2), (1, 3), 4)
    assert "below targetOngoingRequests (4)" in scale_reason((2, 1), (1, 3), 4)
    assert scale_reason((1, 2), (2, 3), 4) == "spec.scaling.minReplicas is 2"
    assert scale_reason((3, 2), (1, 2), 4) == "spec.scaling.maxReplicas is 2"
