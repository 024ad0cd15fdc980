"""The bigmodel.io/v1alpha1 API: BigModel and FineTuneJob as pydantic models."""

from bigmodel_operator.api.base import API_VERSION, GROUP, VERSION, Condition
from bigmodel_operator.api.bigmodel import BigModel, BigModelSpec, BigModelStatus
from bigmodel_operator.api.finetunejob import FineTuneJob, FineTuneJobSpec, FineTuneJobStatus

__all__ = [
    "API_VERSION",
    "GROUP",
    "VERSION",
    "BigModel",
    "BigModelSpec",
    "BigModelStatus",
    "Condition",
    "FineTuneJob",
    "FineTuneJobSpec",
    "FineTuneJobStatus",
]
