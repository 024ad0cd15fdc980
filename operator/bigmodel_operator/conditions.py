"""Condition types, reasons, and the pure function that sets a condition the Kubernetes way."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

# Condition types.
READY = "Ready"
PLANNED = "Planned"
RAYSERVICE_READY = "RayServiceReady"
INGRESS_READY = "IngressReady"
DEGRADED = "Degraded"
COMPLETE = "Complete"
FAILED = "Failed"


class Reason:
    """Reasons: CamelCase, actionable, one constant each."""

    PLANNED = "Planned"
    MODEL_CONFIG_UNAVAILABLE = "ModelConfigUnavailable"
    MODEL_TOO_LARGE_FOR_GPU = "ModelTooLargeForGPU"
    NO_MATCHING_GPU_NODES = "NoMatchingGPUNodes"
    GATED_MODEL_NO_TOKEN = "GatedModelNoToken"
    INVALID_ENGINE_ARGS = "InvalidEngineArgs"
    INVALID_SPEC = "InvalidSpec"
    # Plan errors the spec causes (planning/errors.py): nothing is deployed.
    INVALID_PARALLELISM = "InvalidParallelism"
    QUANTIZATION_MISMATCH = "QuantizationMismatch"
    MAX_MODEL_LEN_TOO_LONG = "MaxModelLenTooLong"
    MODEL_CONFIG_OUT_OF_BOUNDS = "ModelConfigOutOfBounds"
    UNKNOWN_GPU_PRODUCT = "UnknownGPUProduct"
    PLANNING_TIMED_OUT = "PlanningTimedOut"
    UNSUPPORTED_MODEL_FAMILY = "UnsupportedModelFamily"  # planning/training.py: the trainer refuses it
    CHILD_NOT_CONTROLLED = "ChildNotControlled"
    # A child of an earlier object of the same name is still there (garbage collection removes it soon).
    WAITING_FOR_OLD_CHILDREN = "WaitingForOldChildren"
    # A write the apiserver refused (the message is the apiserver's), or a reconcile that raised.
    CHILD_REJECTED = "ChildRejected"
    RECONCILE_ERROR = "ReconcileError"
    RAYSERVICE_CREATED = "RayServiceCreated"
    RAYSERVICE_DEPLOYING = "Deploying"
    STARTUP_SLOW = "StartupSlow"  # still Deploying/NoServeEndpoints after status/bigmodel.py's startup budget
    RAYSERVICE_READY = "ServeEndpointsReady"
    RAYSERVICE_FAILED = "ServeApplicationFailed"
    NO_SERVE_ENDPOINTS = "NoServeEndpoints"
    UPGRADING = "UpgradeInProgress"
    INGRESS_PENDING = "AddressPending"
    INGRESS_READY = "AddressAssigned"
    INGRESS_NOT_REQUESTED = "NotRequested"
    SCALED_TO_ZERO = "ScaledToZero"
    AS_EXPECTED = "AsExpected"
    PARTIALLY_READY = "ReplicasNotReady"
    # FineTuneJob
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    DATASET_INVALID = "DatasetInvalid"
    OUT_OF_MEMORY = "OutOfMemory"
    DEADLINE_EXCEEDED = "DeadlineExceeded"
    BACKOFF_LIMIT_EXCEEDED = "BackoffLimitExceeded"
    BASE_MODEL_NOT_FOUND = "BaseModelNotFound"
    FEEDBACK_SOURCE_NOT_FOUND = "FeedbackSourceNotFound"  # dataset.fromFeedback names no BigModel
    FEEDBACK_NOT_ENABLED = "FeedbackNotEnabled"  # ... or one without spec.feedback
    NO_MATCHING_FEEDBACK = "NoMatchingFeedback"  # the trainer found no record passing the filter
    TRAINING_ERROR = "TrainingError"


MAX_MESSAGE = 2000
"""Characters of a condition message we write (the apiserver allows 32,768; a status stays readable)."""


@dataclass
class Blocker:
    """A problem that keeps a resource from being deployed (or, with blocks_deploy=False, from being ready),
    with the condition reason that names it. Both reconcilers report their problems as these."""

    reason: str
    message: str
    blocks_deploy: bool = True


def bounded(message: str, limit: int = MAX_MESSAGE) -> str:
    """`message` cut to `limit` characters, marked when cut."""
    return message if len(message) <= limit else message[: limit - 1] + "…"


def now() -> str:
    """The current time as Kubernetes writes it (RFC 3339, seconds, Z)."""
    return datetime.now(UTC).replace(microsecond=0).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: list[dict[str, Any]] | None,
    type_: str,
    status: bool | str,
    reason: str,
    message: str,
    generation: int | None,
    timestamp: str | None = None,
) -> list[dict[str, Any]]:
    """Return `conditions` with `type_` set; lastTransitionTime moves only when the status flips."""
    status_text = status if isinstance(status, str) else ("True" if status else "False")
    message = bounded(message)
    result = [dict(c) for c in conditions or []]
    for cond in result:
        if cond.get("type") == type_:
            if cond.get("status") != status_text:
                cond["lastTransitionTime"] = timestamp or now()
            cond.update(status=status_text, reason=reason, message=message, observedGeneration=generation)
            return result
    result.append(
        {
            "type": type_,
            "status": status_text,
            "reason": reason,
            "message": message,
            "lastTransitionTime": timestamp or now(),
            "observedGeneration": generation,
        }
    )
    return result


def get_condition(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    """The condition of this type, or None."""
    return next((c for c in conditions or [] if c.get("type") == type_), None)


BLOCKING_PLAN_REASONS = frozenset(
    {
        Reason.MODEL_TOO_LARGE_FOR_GPU,
        Reason.INVALID_ENGINE_ARGS,
        Reason.INVALID_PARALLELISM,
        Reason.QUANTIZATION_MISMATCH,
        Reason.MAX_MODEL_LEN_TOO_LONG,
        Reason.MODEL_CONFIG_OUT_OF_BOUNDS,
        Reason.UNKNOWN_GPU_PRODUCT,
        Reason.PLANNING_TIMED_OUT,
        Reason.UNSUPPORTED_MODEL_FAMILY,
    }
)
"""Plan outcomes caused by the spec (or a hostile config): the model is not deployed. A config the
operator merely cannot read (ModelConfigUnavailable) still deploys, without a plan."""
