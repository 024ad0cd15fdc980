"""Checks the operator repeats after admission, for objects stored before a CRD rule existed (a CRD
upgrade does not re-validate stored objects) and for clusters that run an older CRD."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlparse

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.api.base import DNS_1035_LABEL
from bigmodel_operator.builders.volumes import SCRATCH_MOUNTS

_DNS_1035 = re.compile(DNS_1035_LABEL)


def name_problem(name: str) -> str | None:
    """Why KubeRay would refuse a RayService with this name, or None (its rule: IsDNS1035Label)."""
    if len(name) <= 63 and _DNS_1035.match(name):
        return None
    return (
        f"metadata.name {name!r} is not a DNS-1035 label (lowercase letters, digits and '-', starting with a "
        "letter, no dots, at most 63 characters); KubeRay refuses a RayService with that name: recreate the "
        "BigModel under a name such as " + repr(suggest_name(name))
    )


def suggest_name(name: str) -> str:
    """A DNS-1035 label close to `name` (for the message only: child names are never rewritten)."""
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    if not label or not label[0].isalpha():
        label = f"m-{label}".rstrip("-")
    return label[:63].rstrip("-")


def hidden_path_problems(spec: BigModelSpec) -> list[str]:
    """file:// sources under a path the serving pods mount an empty scratch volume on (/tmp, the cache,
    /dev/shm): the image's files there are hidden, so vLLM would find nothing and the replica crash-loop.
    (`bigmodel serve` runs without pods and does not apply this check.)"""
    sources = [("spec.model.uri", spec.model.uri), ("spec.model.tokenizer", spec.model.tokenizer)]
    sources += [(f"spec.adapters[{i}].uri", adapter.uri) for i, adapter in enumerate(spec.adapters or [])]
    problems = []
    for field, uri in sources:
        parsed = urlparse(uri or "")
        if parsed.scheme != "file":
            continue
        path = posixpath.normpath(parsed.path)
        for mount in SCRATCH_MOUNTS:
            if path == mount or path.startswith(mount + "/"):
                problems.append(
                    f"{field} {uri} lies under {mount}, where the serving pods mount an empty scratch volume "
                    "that hides the image's files: put the files elsewhere in the image (e.g. /opt/models/...) "
                    "or use pvc://, s3:// or hf://"
                )
    return problems
