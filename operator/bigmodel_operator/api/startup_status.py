"""Cold starts in a BigModel's status: what each engine replica reports, and the timeline built from it.

Two writers, disjoint fields (docs/development.md, "Status ownership is split by field"):

- `status.replicaStartups` is written by the engine replicas themselves (bigmodel_serving.startup_report):
  one entry per Serve replica, keyed by its replica id, with the phases only the replica sees (weights
  downloading with bytes done / total, loading into memory, compiling and warming up, ready).
- `status.startup` and `status.lastColdStart` are written by the operator: the Kubernetes phases of the
  replica's pod (scheduled, image pulled and container started) joined with the replica's own report
  (status/startup_phases.py).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from bigmodel_operator.api.base import ApiModel

PhaseName = Literal["Scheduling", "PullingImage", "StartingRay", "Downloading", "Loading", "Compiling", "Ready"]
TimelinePhase = Literal[
    "Scheduling", "PullingImage", "StartingRay", "Downloading", "Loading", "Compiling", "Ready", "Failed"
]


class ReportedPhase(ApiModel):
    """One phase as an engine replica saw it (times in RFC 3339 with milliseconds)."""

    name: Literal["Downloading", "Loading", "Compiling"] = Field(description="The phase.")
    started_at: str | None = Field(default=None, max_length=40, description="When it began.")
    finished_at: str | None = Field(default=None, max_length=40, description="When it ended; empty while running.")
    bytes_done: int | None = Field(default=None, ge=0, description="Downloading: bytes in the local copy so far.")
    bytes_total: int | None = Field(default=None, ge=0, description="Downloading: bytes of the whole model.")
    cached: bool | None = Field(
        default=None, description="Downloading: the weights were already in the weight cache (nothing downloaded)."
    )
    source: str | None = Field(
        default=None,
        max_length=256,
        description="Who measured it: `download` (our downloader), `vllm` (vLLM's log lines), `engine` (the replica).",
    )


class ReplicaStartupReport(ApiModel):
    """What one engine replica reports about its own start (written by the replica, read by the operator)."""

    pod: str | None = Field(default=None, max_length=253, description="The pod the replica runs in.")
    constructed_at: str | None = Field(
        default=None, max_length=40, description="When the replica's constructor began (Ray and the imports done)."
    )
    phases: list[ReportedPhase] | None = Field(default=None, max_length=8, description="Phases so far, in order.")
    ready_at: str | None = Field(default=None, max_length=40, description="When the engine was ready.")
    failed: str | None = Field(default=None, max_length=2000, description="Why the start failed, if it did.")
    updated_at: str | None = Field(default=None, max_length=40, description="When this report was last written.")
    first_on_pod: bool | None = Field(
        default=None,
        description="The first engine replica in its pod: the pod's own start (scheduling, image) is part of it.",
    )


class StartupPhase(ApiModel):
    """One phase of a cold start with its duration."""

    name: PhaseName = Field(
        description=(
            "Scheduling: pod created until a node took it; PullingImage: until the container started (image pull "
            "and container creation); StartingRay: until the engine replica began (Ray joins the cluster, Serve "
            "places the replica, Python imports vLLM); Downloading: weights into the local or shared cache; "
            "Loading: weights into memory; Compiling: vLLM's profiling, KV cache allocation, compilation and "
            "warm-up; Ready: serving."
        )
    )
    started_at: str | None = Field(default=None, max_length=40, description="When it began.")
    finished_at: str | None = Field(default=None, max_length=40, description="When it ended; empty while running.")
    seconds: float | None = Field(default=None, description="How long it took (so far, while it runs).")
    bytes_done: int | None = Field(default=None, description="Downloading: bytes so far.")
    bytes_total: int | None = Field(default=None, description="Downloading: bytes in all.")
    eta_seconds: float | None = Field(default=None, description="Downloading: seconds left at the rate so far.")
    cached: bool | None = Field(default=None, description="Downloading: served from the weight cache.")
    source: str | None = Field(
        default=None, max_length=64, description="kubernetes (pod conditions), download, vllm or engine."
    )


class StartupTimeline(ApiModel):
    """A replica's cold start: where the time went."""

    replica: str | None = Field(default=None, max_length=253, description="Serve replica id.")
    pod: str | None = Field(default=None, max_length=253, description="Pod name.")
    phase: TimelinePhase = Field(description="The phase it is in now (Ready when done, Failed when it failed).")
    started_at: str | None = Field(default=None, max_length=40, description="Pod creation (or replica start).")
    ready_at: str | None = Field(default=None, max_length=40, description="When it served.")
    seconds: float | None = Field(default=None, description="Total so far, or in all once ready.")
    phases: list[StartupPhase] | None = Field(default=None, max_length=8, description="Each phase, in order.")
    message: str | None = Field(default=None, max_length=2000, description="Why it failed, if it did.")
