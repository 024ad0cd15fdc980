"""Manifests shared by the integration packages (importable because pytest puts tests/integration on sys.path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

EXAMPLES = Path(__file__).resolve().parents[2] / "docs" / "examples"


def cluster_finetunejob(name: str = "tune", **annotations: str) -> dict[str, Any]:
    """docs/examples/finetunejob-lora.yaml made runnable on the test cluster.

    file:// paths inside the trainer image replace the PVCs (the test cluster has no storage
    provisioner), and the parts that need other objects (deployTo, credentials) are dropped.
    """
    body: dict[str, Any] = yaml.safe_load((EXAMPLES / "finetunejob-lora.yaml").read_text())
    body["metadata"] = {"name": name, "annotations": annotations} if annotations else {"name": name}
    spec = body["spec"]
    spec["baseModel"] = {"uri": "file:///models/llama-8b"}
    spec["dataset"]["uri"] = "file:///data/chats.jsonl"
    spec["output"]["uri"] = "file:///output/tune"
    spec.pop("deployTo")
    spec.pop("credentials")
    return body
