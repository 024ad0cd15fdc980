"""The feedback API: where a BigModel's feedback goes (`spec.feedback`), and a FineTuneJob that trains
on it (`spec.dataset.fromFeedback`). See docs/loop.md, section Feedback."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import ConfigDict, Field, model_validator

from bigmodel_operator.api.base import ApiModel, ObjectName, SafeLocation, location_rules, rules

S3_SINK_PATTERN = r"^s3://[a-z0-9][-a-z0-9.]{1,61}[a-z0-9](/\S*)?$"
SINK_PATH_PATTERN = r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$"
RATING_MIN, RATING_MAX = 1, 5


class FeedbackPvcSink(ApiModel):
    """A PersistentVolumeClaim in the BigModel's namespace, mounted read-write into the model's Ray pods."""

    claim_name: ObjectName = Field(
        description=(
            "The claim. With more than one Ray pod (autoscaling, or the head and a worker on different nodes) "
            "it needs access mode ReadWriteMany."
        ),
    )
    path: Annotated[str | None, SafeLocation] = Field(
        default=None,
        max_length=1024,
        pattern=SINK_PATH_PATTERN,
        description="Directory inside the claim for the JSONL files (default feedback/<BigModel name>).",
        json_schema_extra=location_rules("feedback.sink.pvc.path"),
    )


class FeedbackSinkSpec(ApiModel):
    """Where feedback records are appended: a claim, or an object store."""

    model_config = ConfigDict(
        json_schema_extra=rules("has(self.pvc) != has(self.uri)", "set exactly one of sink.pvc or sink.uri", ".pvc")
    )

    pvc: FeedbackPvcSink | None = Field(default=None, description="A PersistentVolumeClaim (recommended).")
    uri: Annotated[str | None, SafeLocation] = Field(
        default=None,
        max_length=2048,
        pattern=S3_SINK_PATTERN,
        description=(
            "s3://bucket/prefix (S3 or an S3-compatible store): one JSONL object per feedback under "
            "<prefix>/feedback-YYYY-MM-DD/, with the keys of credentials.storageSecretName."
        ),
        json_schema_extra=location_rules("feedback.sink.uri"),
    )

    @model_validator(mode="after")
    def _one(self) -> FeedbackSinkSpec:
        if (self.pvc is None) == (self.uri is None):
            raise ValueError("set exactly one of sink.pvc or sink.uri")
        return self


class FeedbackRetentionSpec(ApiModel):
    """How long answered completions take feedback (their journals on the sink are kept this long) and how many
    the feedback store holds in memory (a cache: older answers are read from the journals)."""

    seconds: int | None = Field(
        default=None, ge=60, le=30 * 86_400, description="An answer takes feedback this long (default 86400: 24 h)."
    )
    max_entries: int | None = Field(
        default=None, ge=1, le=10_000_000, description="Answers cached in memory; the oldest go first (default 50000)."
    )


class FeedbackSpec(ApiModel):
    """`POST /v1/feedback` on this model's endpoint, and the sink its records go to."""

    model_config = ConfigDict(
        json_schema_extra=rules(
            "!has(self.enabled) || !self.enabled || has(self.sink)", "feedback.enabled needs feedback.sink", ".sink"
        )
    )

    enabled: bool | None = Field(
        default=None,
        description=(
            "Accept feedback (default false): the ingress keeps each answer's id, key name, served model "
            "version and redacted conversation for `retention`, and appends rated answers as chat JSONL."
        ),
    )
    sink: FeedbackSinkSpec | None = Field(default=None, description="Where the JSONL records go.")
    retention: FeedbackRetentionSpec | None = Field(default=None, description="How long answers take feedback.")

    @model_validator(mode="after")
    def _sink_when_enabled(self) -> FeedbackSpec:
        if self.enabled and self.sink is None:
            raise ValueError("feedback.enabled needs feedback.sink")
        return self


class FromFeedbackSpec(ApiModel):
    """Train on the feedback a BigModel collected: rated answers, the correction in the answer's place."""

    big_model: ObjectName = Field(description="The BigModel (same namespace) whose feedback sink is read.")
    min_rating: int | None = Field(
        default=None,
        ge=RATING_MIN,
        le=RATING_MAX,
        description="Keep feedback rated at least this, 1 (bad) to 5 (good); default 1 (all).",
    )
    since: datetime | None = Field(default=None, description="Keep feedback given at or after this time (RFC 3339).")
