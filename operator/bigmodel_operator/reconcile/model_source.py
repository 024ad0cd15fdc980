"""Find a model's config.json for the plan: inline, a ConfigMap, or the Hugging Face Hub.

pvc://, file://, s3://, gs:// and oci:// sources cannot be read by the operator; for those the user
puts the config inline (spec.model.config) or in a ConfigMap. The Hub is asked only for hf:// models
and only when `fetchHubConfig` is on (it is off in air-gapped clusters and in tests).
"""

from __future__ import annotations

import base64
import json
import logging
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError, Kube

HUB_CACHE_SECONDS = 3600.0
log = logging.getLogger(__name__)


@dataclass
class ModelConfigResult:
    """The config.json (or None) and, when missing, why."""

    config: dict[str, Any] | None
    reason: str = Reason.PLANNED
    message: str = ""


_hub_cache: dict[tuple[str, str], tuple[float, dict[str, Any]]] = {}


SECRET_NOT_CHECKED = ""  # the operator may not read Secrets here: assume present, let the pod tell


async def read_secret_key(kube: Kube, namespace: str, name: str, key: str, config: OperatorConfig) -> str | None:
    """The decoded value of a Secret key; None when the Secret or key is missing; SECRET_NOT_CHECKED when
    checks are off or RBAC forbids reading Secrets in this namespace."""
    if not config.check_secrets:
        return SECRET_NOT_CHECKED
    try:
        secret = await kube.get("Secret", namespace, name)
    except ApiError as error:
        if error.status == 403:
            log.warning("not allowed to read Secret %s/%s; skipping the token check", namespace, name)
            return SECRET_NOT_CHECKED
        raise
    if not secret or key not in (secret.get("data") or {}):
        return None
    return base64.b64decode(secret["data"][key]).decode("utf-8", "replace").strip()


async def fetch_hub_config(
    repo: str, revision: str | None, token: str | None, config: OperatorConfig
) -> ModelConfigResult:
    """GET config.json of an hf:// model from the Hub (cached for an hour)."""
    rev = revision or "main"
    cached = _hub_cache.get((repo, rev))
    if cached and time.monotonic() - cached[0] < HUB_CACHE_SECONDS:
        return ModelConfigResult(cached[1])
    url = f"{config.hub_endpoint}/{repo}/resolve/{quote(rev, safe='')}/config.json"
    headers = {"Authorization": f"Bearer {token}"} if token else {}  # "" (not checked) sends none
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url, headers=headers) as response,
        ):
            if response.status in {401, 403}:
                why = "the token was refused" if token else "no token is configured"
                return ModelConfigResult(
                    None,
                    Reason.GATED_MODEL_NO_TOKEN,
                    f"hf://{repo} is gated and {why}: set spec.credentials.hfTokenSecretRef to a Secret "
                    "holding a token that has accepted the model's licence",
                )
            if response.status == 404:
                return ModelConfigResult(
                    None, Reason.MODEL_CONFIG_UNAVAILABLE, f"hf://{repo} has no config.json at revision {rev}"
                )
            response.raise_for_status()
            data = json.loads(await response.text())
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return ModelConfigResult(
            None, Reason.MODEL_CONFIG_UNAVAILABLE, f"could not read config.json of hf://{repo}: {error}"
        )
    _hub_cache[(repo, rev)] = (time.monotonic(), data)
    return ModelConfigResult(data)


async def model_config_for(
    kube: Kube,
    namespace: str,
    uri: str,
    revision: str | None,
    inline: dict[str, Any] | None,
    config_map: tuple[str, str] | None,
    token: str | None,
    config: OperatorConfig,
) -> ModelConfigResult:
    """The model's config.json from the first source that has it."""
    if inline:
        return ModelConfigResult(inline)
    if config_map:
        name, key = config_map
        cm = await kube.get("ConfigMap", namespace, name)
        raw = ((cm or {}).get("data") or {}).get(key)
        if raw is None:
            return ModelConfigResult(
                None, Reason.MODEL_CONFIG_UNAVAILABLE, f"ConfigMap {name} has no key {key} (expected config.json)"
            )
        try:
            return ModelConfigResult(json.loads(raw))
        except ValueError as error:
            return ModelConfigResult(None, Reason.MODEL_CONFIG_UNAVAILABLE, f"ConfigMap {name}/{key}: {error}")
    if uri.startswith("hf://"):
        if not config.fetch_hub_config:
            return ModelConfigResult(
                None,
                Reason.MODEL_CONFIG_UNAVAILABLE,
                "the operator does not read the Hub (fetchHubConfig is off): put the model's config.json "
                "in spec.model.config or a ConfigMap to get a GPU plan",
            )
        return await fetch_hub_config(uri.removeprefix("hf://"), revision, token, config)
    return ModelConfigResult(
        None,
        Reason.MODEL_CONFIG_UNAVAILABLE,
        f"the operator cannot read {uri.split('://', maxsplit=1)[0]}:// sources: put the model's config.json in "
        "spec.model.config or spec.model.configMapRef to get a GPU plan",
    )
