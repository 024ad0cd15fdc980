"""`bigmodel plan FILE.yaml`: the GPU plan the operator would write into status, offline."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from bigmodel_operator.api import BigModelSpec, FineTuneJobSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import load_config
from bigmodel_operator.planning import ServingPlan, TrainingPlan
from bigmodel_operator.reconcile.model_source import ModelConfigResult
from bigmodel_operator.reconcile.plan_glue import serving_plan, training_plan


def _model_config(doc: dict[str, Any], config_json: str | None) -> ModelConfigResult:
    if config_json:
        return ModelConfigResult(json.loads(Path(config_json).read_text()))
    spec = doc.get("spec") or {}
    inline = (spec.get("model") or spec.get("baseModel") or {}).get("config")
    if inline:
        return ModelConfigResult(inline)
    return ModelConfigResult(
        None, Reason.MODEL_CONFIG_UNAVAILABLE, "no config.json: put it in the manifest or pass --model-config FILE"
    )


def plan_command(path: Path, *, config_json: str | None, output: str) -> int:
    """Print the plan of every BigModel / FineTuneJob in the file; exit 1 if one does not fit."""
    config = load_config()
    status = 0
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        name = doc.get("metadata", {}).get("name", "?")
        plan: ServingPlan | TrainingPlan | None
        source = _model_config(doc, config_json)
        try:
            if doc.get("kind") == "BigModel":
                spec = BigModelSpec.model_validate(doc["spec"])
                result = serving_plan(spec, source, config)
                place = placement(spec, result.plan, source.config)
                extra = {
                    "gpusPerReplica": place.gpus_per_replica,
                    "tensorParallelSize": place.tensor_parallel_size,
                    "toolCallParser": place.tool_call_parser or "none",
                }
                reason, message, plan = result.reason, result.message, result.plan
            elif doc.get("kind") == "FineTuneJob":
                tspec = FineTuneJobSpec.model_validate(doc["spec"])
                tresult = training_plan(tspec, source, config)
                extra = {"gpus": tresult.gpus}
                reason, message, plan = tresult.reason, tresult.message, tresult.plan
            else:
                continue
        except ValidationError as error:
            print(f"{name}: invalid spec: {error}", file=sys.stderr)
            status = 1
            continue
        data = plan.model_dump(by_alias=True, mode="json") if plan else None
        if output == "text":
            print(f"{doc['kind']} {name}: {reason}: {message or (plan.summary if plan else '')}")
            if data:
                for key, value in data.items():
                    print(f"  {key}: {value}")
            print(f"  deploys with: {extra}")
        else:
            out = {"name": name, "kind": doc["kind"], "reason": reason, "message": message, "plan": data, **extra}
            print(json.dumps(out, indent=2) if output == "json" else yaml.safe_dump(out, sort_keys=False))
        if reason == Reason.MODEL_TOO_LARGE_FOR_GPU:
            status = 1
    return status
