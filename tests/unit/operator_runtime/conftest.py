"""An in-memory apiserver for the operator's runtime tests (unit tier: no cluster), and bodies to feed it."""

from __future__ import annotations

import copy
import functools
import itertools
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from bigmodel_operator.kube import ApiError

EXAMPLES = Path(__file__).resolve().parents[3] / "docs" / "examples"
Key = tuple[str, str, str]


class FakeKube:
    """Stores what the operator writes; answers like the apiserver for the calls the reconcilers make.

    Calls `on_request` like the real client does (state.note_outside uses it), and counts calls by verb.
    """

    def __init__(self) -> None:
        self.objects: dict[Key, dict[str, Any]] = {}
        self.calls: Counter[str] = Counter()
        self.on_request: Callable[[str], None] | None = None
        self._versions = itertools.count(100)
        self._uids = itertools.count(1)
        self.secret_reads_allowed = True

    def _note(self, method: str) -> None:
        self.calls[method] += 1
        if self.on_request is not None:
            self.on_request(method)

    def _stamp(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        meta.setdefault("uid", f"uid-{next(self._uids)}")
        meta["resourceVersion"] = str(next(self._versions))
        return obj

    def put(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create an object directly (as a user or garbage collection's victim would have it)."""
        obj = self._stamp(copy.deepcopy(obj))
        self.objects[(obj["kind"], obj["metadata"].get("namespace", ""), obj["metadata"]["name"])] = obj
        return copy.deepcopy(obj)

    async def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any] | None:
        self._note("GET")
        if kind == "Secret" and not self.secret_reads_allowed:
            raise ApiError(403, json.dumps({"message": "forbidden"}), "GET", f"/secrets/{name}")
        found = self.objects.get((kind, namespace or "", name))
        return copy.deepcopy(found) if found else None

    async def list(self, kind: str, namespace: str | None = None, label_selector: str | None = None) -> list[dict]:
        self._note("GET")
        return []

    async def apply(self, obj: dict[str, Any], *, if_absent: bool = False) -> dict[str, Any]:
        self._note("PATCH")
        key = (obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"])
        if if_absent and key in self.objects:  # the apiserver's answer to the resourceVersion precondition
            raise ApiError(409, json.dumps({"message": "the object has been modified"}), "PATCH", key[2])
        live = copy.deepcopy(obj)
        if key in self.objects:
            live["metadata"]["uid"] = self.objects[key]["metadata"]["uid"]
            live["status"] = self.objects[key].get("status")
        self.objects[key] = self._stamp(live)
        return copy.deepcopy(self.objects[key])

    async def patch_status(self, kind: str, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self._note("PATCH")
        obj = self.objects.get((kind, namespace, name))
        if obj is None:
            raise ApiError(404, json.dumps({"message": "not found"}), "PATCH", name)
        merged = {**(obj.get("status") or {}), **status}
        obj["status"] = {k: v for k, v in merged.items() if v is not None}
        self._stamp(obj)
        return copy.deepcopy(obj)

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> dict[str, Any] | None:
        self._note(method)
        if method == "POST" and body and body.get("kind") == "Secret":
            key = ("Secret", body["metadata"]["namespace"], body["metadata"]["name"])
            if key in self.objects:
                raise ApiError(409, json.dumps({"message": "already exists"}), method, path)
            self.objects[key] = self._stamp(copy.deepcopy(body))
            return copy.deepcopy(self.objects[key])
        return {}

    async def delete(self, kind: str, namespace: str, name: str, uid: str | None = None) -> None:
        self._note("DELETE")
        self.objects.pop((kind, namespace, name), None)

    async def json_patch(self, kind: str, namespace: str, name: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        self._note("PATCH")
        return {}

    def writes(self) -> int:
        return sum(n for verb, n in self.calls.items() if verb != "GET")


@functools.cache
def _parsed(file: str) -> dict[str, Any]:
    parsed: dict[str, Any] = yaml.safe_load((EXAMPLES / file).read_text())
    return parsed


def example(file: str, **meta: Any) -> dict[str, Any]:
    body = copy.deepcopy(_parsed(file))
    body["metadata"].update({"namespace": "team-a", "generation": 1, "resourceVersion": "1", **meta})
    body["metadata"].setdefault("uid", f"uid-{body['metadata']['name']}")
    return body


def tiny_bigmodel(name: str = "tiny", namespace: str = "team-a") -> dict[str, Any]:
    body = example("bigmodel-tiny-cpu.yaml", name=name, namespace=namespace, uid=f"uid-bm-{namespace}-{name}")
    body["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    return body


def finetunejob(name: str, bigmodel: str, namespace: str = "team-a", phase: str | None = None) -> dict[str, Any]:
    """A FineTuneJob on the tiny model's base (by bigModelRef) that deploys to `bigmodel`."""
    body = example("finetunejob-lora.yaml", name=name, namespace=namespace, uid=f"uid-ftj-{namespace}-{name}")
    spec = body["spec"]
    spec.pop("credentials", None)
    spec["baseModel"] = {"bigModelRef": {"name": bigmodel}}
    spec["resources"] = {"gpu": {"count": 0}, "cpu": 1, "memory": "2Gi"}
    spec["hyperparameters"]["maxSeqLength"] = 256
    spec["deployTo"] = {"bigModel": bigmodel, "adapterName": name}
    spec["output"] = {"uri": f"pvc://adapters/{name}"}
    if phase:
        body["status"] = {"phase": phase}
    return body
