"""The API-keys Secret the operator generates when a BigModel names none (auth is on by default)."""

from __future__ import annotations

import base64
import secrets
from typing import Any

from bigmodel_operator import naming

GENERATED_KEY_NAME = "default"


def generate_api_key() -> str:
    """A new random key: 32 bytes of entropy, URL-safe, with a prefix that makes leaked keys greppable."""
    return "bm-" + secrets.token_urlsafe(32)


def build_api_keys_secret(body: dict[str, Any], secret_name: str, key: str) -> dict[str, Any]:
    """The Secret `<name>-api-keys` holding one key named `default`, owned by the BigModel.

    Created once and never updated (the reconcile applies it create-only), so users rotate or add
    keys by editing it; the serving app re-reads the mounted files without a restart.
    """
    name = body["metadata"]["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {
            "name": secret_name,
            "namespace": body["metadata"]["namespace"],
            "labels": naming.labels(naming.LABEL_BIGMODEL, name, "api-keys"),
            "ownerReferences": [naming.owner_reference(body)],
        },
        "data": {GENERATED_KEY_NAME: base64.b64encode(key.encode()).decode()},
    }
