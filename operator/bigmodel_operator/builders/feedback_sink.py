"""Rendering feedback: the ingress's `feedback` user_config, the sink volume of the Ray pods, and the
trainer's dataset for a FineTuneJob with `dataset.fromFeedback`.

A pvc sink is mounted read-write at FEEDBACK_MOUNT in every Ray pod (head and workers: the feedback
actor, which writes the files, has no CPU request and may run on any of them); the ingress writes
to FEEDBACK_MOUNT/<path>. A FineTuneJob reads the same claim read-only as pvc://<claim>/<path>.
"""

from __future__ import annotations

from typing import Any

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.api.feedback import FeedbackSinkSpec
from bigmodel_operator.api.finetunejob import DatasetSpec

FEEDBACK_MOUNT = "/var/lib/bigmodel/feedback"
FEEDBACK_VOLUME = "feedback-sink"


def _sink(spec: BigModelSpec) -> FeedbackSinkSpec | None:
    """The sink when feedback is enabled, else None."""
    return spec.feedback.sink if spec.feedback and spec.feedback.enabled else None


def sink_subpath(name: str, spec: BigModelSpec) -> str:
    """The directory inside the claim: sink.pvc.path, or feedback/<BigModel name>."""
    pvc = spec.feedback.sink.pvc if spec.feedback and spec.feedback.sink else None
    return (pvc.path if pvc and pvc.path else None) or f"feedback/{name}"


def ingress_feedback(name: str, spec: BigModelSpec) -> dict[str, Any] | None:
    """bigmodel_serving.args.FeedbackArgs for the ingress user_config; None when feedback is off."""
    sink = _sink(spec)
    if sink is None or spec.feedback is None:
        return None
    out: dict[str, Any] = {"enabled": True}
    if sink.pvc is not None:
        out["sink_path"] = f"{FEEDBACK_MOUNT}/{sink_subpath(name, spec)}"
        out["sink_root"] = FEEDBACK_MOUNT  # the claim's mount: the ingress resolves the sink inside it
    else:
        out["sink_uri"] = sink.uri
    retention = spec.feedback.retention
    if retention and retention.seconds is not None:
        out["ttl_s"] = retention.seconds
    if retention and retention.max_entries is not None:
        out["max_entries"] = retention.max_entries
    return out


def sink_volumes(spec: BigModelSpec) -> list[dict[str, Any]]:
    """The pvc sink as a pod volume (read-write), or nothing."""
    sink = _sink(spec)
    if sink is None or sink.pvc is None:
        return []
    return [{"name": FEEDBACK_VOLUME, "persistentVolumeClaim": {"claimName": sink.pvc.claim_name}}]


def sink_mounts(spec: BigModelSpec) -> list[dict[str, Any]]:
    """Where the pvc sink is mounted in a Ray container, or nothing."""
    return [{"name": FEEDBACK_VOLUME, "mountPath": FEEDBACK_MOUNT}] if sink_volumes(spec) else []


def sink_uri(name: str, spec: BigModelSpec) -> str | None:
    """The sink as a FineTuneJob reads it: pvc://<claim>/<path> or the s3:// URI; None when off."""
    sink = _sink(spec)
    if sink is None:
        return None
    return f"pvc://{sink.pvc.claim_name}/{sink_subpath(name, spec)}" if sink.pvc else sink.uri


def dataset_source(dataset: DatasetSpec, feedback_sink: str | None, created: str | None = None) -> dict[str, Any]:
    """uri and format of the trainer's dataset; with fromFeedback, the sink and the filter. `created` (the
    FineTuneJob's creationTimestamp) ends the snapshot: feedback given later is not read, so a retried or
    resumed job trains on exactly the same rows."""
    wanted = dataset.from_feedback
    if wanted is None:
        return {"uri": dataset.uri, "format": dataset.format}
    if feedback_sink is None:
        raise ValueError("dataset.fromFeedback needs the BigModel's resolved feedback sink")
    feedback: dict[str, Any] = {}
    if wanted.min_rating is not None:
        feedback["min_rating"] = wanted.min_rating
    if wanted.since is not None:
        feedback["since"] = wanted.since.isoformat().replace("+00:00", "Z")
    if created:
        feedback["until"] = created
    return {"uri": feedback_sink, "format": "chat", "feedback": feedback}
