"""Cold start phases from pod conditions and the replicas' own reports (status/startup_phases.py)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from bigmodel_operator.status.startup_phases import (
    PodRecord,
    download_eta,
    pod_record,
    replica_timeline,
    slow_phase,
    startups,
    summary,
)

T0 = datetime(2026, 12, 6, 10, 0, 0, tzinfo=UTC)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def stamp(seconds: float) -> str:
    when = at(seconds)
    return when.strftime("%Y-%m-%dT%H:%M:%S.") + f"{when.microsecond // 1000:03d}Z"


def pod(name: str = "w-1", started: float | None = 12, ended: float | None = None, **extra: Any) -> PodRecord:
    fields: dict[str, Any] = {
        "name": name,
        "node_type": "worker",
        "created": at(0),
        "scheduled": at(2),
        "started": at(started) if started is not None else None,
        "ready": None,
        "ended": at(ended) if ended is not None else None,
        "node": "n1",
        "gpus": 1,
        "cpus": 8.0,
    }
    fields.update(extra)
    return PodRecord(**fields)


def report(ready: float | None = 60.5, **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "pod": "w-1",
        "firstOnPod": True,
        "constructedAt": stamp(30),
        "phases": [
            {
                "name": "Downloading",
                "startedAt": stamp(30.2),
                "finishedAt": stamp(40.2),
                "bytesDone": 2_000_000,
                "bytesTotal": 2_000_000,
                "cached": False,
                "source": "download",
            },
            {"name": "Loading", "startedAt": stamp(40.3), "finishedAt": stamp(45.3), "source": "vllm"},
            {"name": "Compiling", "startedAt": stamp(45.3), "finishedAt": stamp(58.3), "source": "vllm"},
        ],
        "updatedAt": stamp(60.5),
    }
    if ready is not None:
        out["readyAt"] = stamp(ready)
    out.update(extra)
    return out


def test_pod_record_from_a_pod_body() -> None:
    body = {
        "metadata": {
            "name": "tiny-worker-abc",
            "creationTimestamp": "2026-12-06T10:00:00Z",
            "labels": {"ray.io/node-type": "worker"},
        },
        "spec": {
            "nodeName": "n1",
            "containers": [
                {"name": "ray-worker", "resources": {"requests": {"cpu": "500m", "nvidia.com/gpu": "2"}}},
            ],
        },
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": "2026-12-06T10:00:02Z"},
                {"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-06T10:00:40Z"},
            ],
            "containerStatuses": [{"name": "ray-worker", "state": {"running": {"startedAt": "2026-12-06T10:00:12Z"}}}],
        },
    }
    record = pod_record(body)
    assert (record.created, record.scheduled, record.started, record.ready) == (at(0), at(2), at(12), at(40))
    assert (record.gpus, record.cpus, record.node, record.ended) == (2, 0.5, "n1", None)
    assert pod_record(body, deleted_at=at(99)).ended == at(99)


def test_pending_pod_keeps_the_schedulers_message() -> None:
    body = {
        "metadata": {"name": "p", "creationTimestamp": "2026-12-06T10:00:00Z"},
        "spec": {"containers": [{"name": "ray-worker"}]},
        "status": {
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/3 nodes have GPUs"}
            ]
        },
    }
    record = pod_record(body)
    assert record.scheduled is None and record.unschedulable == "0/3 nodes have GPUs"


def test_a_cold_start_is_the_pods_phases_then_the_replicas() -> None:
    timeline = replica_timeline("r1", report(), pod(), at(70))
    names = [p["name"] for p in timeline["phases"]]
    assert names == ["Scheduling", "PullingImage", "StartingRay", "Downloading", "Loading", "Compiling", "Ready"]
    seconds = {p["name"]: p["seconds"] for p in timeline["phases"]}
    assert seconds == {
        "Scheduling": 2.0,
        "PullingImage": 10.0,
        "StartingRay": 18.0,
        "Downloading": 10.0,
        "Loading": 5.0,
        "Compiling": 13.0,
        "Ready": 0.0,
    }
    assert timeline["phase"] == "Ready" and timeline["seconds"] == 60.5  # pod created -> engine ready
    assert timeline["startedAt"] == "2026-12-06T10:00:00Z" and timeline["pod"] == "w-1"
    sources = {p["name"]: p["source"] for p in timeline["phases"]}
    assert sources["Scheduling"] == "kubernetes" and sources["Loading"] == "vllm"


def test_a_replica_restarted_in_a_running_pod_is_not_charged_the_pods_start() -> None:
    timeline = replica_timeline("r2", report(firstOnPod=False), pod(), at(70))
    assert timeline["phases"][0]["name"] == "Downloading"
    assert timeline["seconds"] == 30.5  # constructed (30) -> ready (60.5)


def test_a_running_download_has_progress_and_an_eta() -> None:
    running = report(ready=None)
    running["phases"] = [
        {"name": "Downloading", "startedAt": stamp(30), "bytesDone": 250, "bytesTotal": 1000, "source": "download"}
    ]
    timeline = replica_timeline("r1", running, pod(), at(40))
    download = timeline["phases"][-1]
    assert timeline["phase"] == "Downloading"
    assert (download["seconds"], download["bytesDone"], download["etaSeconds"]) == (10.0, 250, 30.0)


def test_download_eta() -> None:
    assert download_eta(250, 1000, 10) == 30.0
    assert download_eta(None, 1000, 10) is None
    assert download_eta(1000, 1000, 10) == 0.0


def test_a_new_worker_pod_without_a_report_is_a_cold_start_in_its_kubernetes_phases() -> None:
    found = startups({}, {"w-1": pod(started=None, scheduled=at(2))}, None, set(), at(5))
    assert found.current is not None and found.current["phase"] == "PullingImage"
    assert found.starting == 1 and found.ready_replicas == 0 and not found.reporting


def test_an_idle_pod_that_had_a_replica_is_not_a_cold_start() -> None:
    found = startups({}, {"w-1": pod()}, None, {"w-1"}, at(400))
    assert found.current is None and found.starting == 0


def test_finished_cold_start_becomes_the_last_one_once() -> None:
    pods = {"w-1": pod()}
    first = startups({"r1": report()}, pods, None, set(), at(70))
    assert first.ready_replicas == 1 and first.current is None
    assert first.last is not None and first.last["replica"] == "r1"
    assert [t["replica"] for t in first.finished] == ["r1"]
    again = startups({"r1": report()}, pods, first.last, set(), at(80))
    assert again.finished == [] and again.last == first.last


def test_reports_of_pods_that_are_gone_are_pruned() -> None:
    found = startups({"r1": report()}, {"w-1": pod(ended=100)}, None, set(), at(120))
    assert found.prune == ["r1"] and found.ready_replicas == 0


def test_the_head_pod_is_never_a_cold_start() -> None:
    head = pod("h", node_type="head")
    assert startups({}, {"h": head}, None, set(), at(5)).current is None


def test_summary_names_each_phase() -> None:
    text = summary(replica_timeline("r1", report(), pod(), at(70)))
    assert text.startswith("w-1 ready in 60.5 s: Scheduling 2 s, PullingImage 10 s, StartingRay 18 s")
    assert "Downloading 10 s (2.0 MB)" in text


def test_stalled_download_and_slow_scheduling() -> None:
    running = report(ready=None, updatedAt=stamp(35))
    running["phases"] = [
        {"name": "Downloading", "startedAt": stamp(30), "bytesDone": 5_000_000, "bytesTotal": 10_000_000}
    ]
    timeline = replica_timeline("r1", running, pod(), at(400))
    reason, message = slow_phase(timeline, pod(), running, 300, at(400)) or ("", "")
    assert reason == "DownloadStalled" and "5.0 of 10.0 MB" in message
    assert slow_phase(timeline, pod(), running, 300, at(200)) is None
    pending = pod(scheduled=None, started=None, unschedulable="0/3 nodes have GPUs")
    waiting = replica_timeline(None, None, pending, at(900))
    reason, message = slow_phase(waiting, pending, None, 300, at(900)) or ("", "")
    assert reason == "ColdStartSlow" and "Scheduling has taken 900 s so far: 0/3 nodes have GPUs" in message


def test_failed_start_is_reported() -> None:
    timeline = replica_timeline("r1", report(ready=None, failed="OutOfMemoryError: CUDA"), pod(), at(70))
    assert timeline["phase"] == "Failed" and timeline["message"].startswith("OutOfMemoryError")
