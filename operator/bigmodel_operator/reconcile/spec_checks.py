"""Checks the operator repeats after admission, for objects stored before a CRD rule existed (a CRD
upgrade does not re-validate stored objects) and for clusters that run an older CRD."""

from __future__ import annotations

import re

from bigmodel_operator.api.base import DNS_1035_LABEL

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
