"""Find a model's config.json for the plan: inline, a ConfigMap, or the Hugging Face Hub.

pvc://, file://, s3://, gs:// and oci:// sources cannot be read by the operator; for those the user
puts the config inline (spec.model.config) or in a ConfigMap. The Hub is asked only for hf:// models
and only when `fetchHubConfig` is on (it is off in air-gapped clusters and in tests).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp

from bigmodel_operator.conditions import Reason
from bigmodel_operator.config import OperatorConfig
from bigmodel_operator.kube import ApiError, Kube
from bigmodel_operator.reconcile.offload import off_loop

HUB_CACHE_SECONDS = 3600.0
HUB_CACHE_MAX_ENTRIES = 512
"""Configs kept at most (least recently used go first): one per (model, revision, token) in the cluster."""
HUB_CACHE_MAX_BYTES = 16 * 2**20
"""Downloaded bytes the cache may hold in all (real configs are 1-50 KiB: thousands fit)."""
HUB_READ_CHUNK = 16 * 1024
MAX_CONFIG_BYTES = 256 * 1024
"""A config.json larger than this is refused (real ones are 1-50 KiB; big quantized MoE configs
that list ignored modules stay well under it)."""
MAX_CONFIG_DEPTH = 32
"""Nesting deeper than this is refused before parsing (real configs nest 3-4 levels)."""
log = logging.getLogger(__name__)


@dataclass
class ModelConfigResult:
    """The config.json (or None) and, when missing, why."""

    config: dict[str, Any] | None
    reason: str = Reason.PLANNED
    message: str = ""


class HubConfigCache:
    """Fetched Hub configs, bounded by age (HUB_CACHE_SECONDS), count and downloaded bytes (LRU)."""

    def __init__(
        self,
        ttl_s: float = HUB_CACHE_SECONDS,
        max_entries: int = HUB_CACHE_MAX_ENTRIES,
        max_bytes: int = HUB_CACHE_MAX_BYTES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s, self.max_entries, self.max_bytes, self.clock = ttl_s, max_entries, max_bytes, clock
        self._entries: OrderedDict[tuple[str, ...], tuple[float, int, dict[str, Any]]] = OrderedDict()
        self.bytes = 0

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple[str, ...]) -> dict[str, Any] | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if self.clock() - entry[0] >= self.ttl_s:
            self._drop(key)
            return None
        self._entries.move_to_end(key)
        return entry[2]

    def put(self, key: tuple[str, ...], size: int, config: dict[str, Any]) -> None:
        if key in self._entries:
            self._drop(key)
        self._entries[key] = (self.clock(), size, config)
        self.bytes += size
        while self._entries and (len(self._entries) > self.max_entries or self.bytes > self.max_bytes):
            self._drop(next(iter(self._entries)))

    def _drop(self, key: tuple[str, ...]) -> None:
        _, size, _ = self._entries.pop(key)
        self.bytes -= size


_hub_cache = HubConfigCache()


def _cache_key(repo: str, revision: str, token: str | None) -> tuple[str, str, str]:
    """Per token too: a gated model's config fetched with one namespace's token is not another's."""
    return repo, revision, hashlib.sha256(token.encode()).hexdigest()[:16] if token else ""


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
    """GET config.json of an hf:// model from the Hub: streamed with a hard cap of MAX_CONFIG_BYTES,
    parsed off the event loop, cached (HubConfigCache: an hour, LRU, bounded in count and bytes)."""
    rev = revision or "main"
    key = _cache_key(repo, rev, token)
    cached = _hub_cache.get(key)
    if cached is not None:
        return ModelConfigResult(cached)
    where = f"config.json of hf://{repo}"
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
            body = await _read_capped(response)
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        return ModelConfigResult(
            None, Reason.MODEL_CONFIG_UNAVAILABLE, f"could not read config.json of hf://{repo}: {error}"
        )
    if body is None:
        return _too_big(None, where)
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as error:
        return ModelConfigResult(None, Reason.MODEL_CONFIG_UNAVAILABLE, f"{where} is not UTF-8: {error}")
    parsed = await _parse_off_loop(lambda: parse_config_text(text, where), where)
    if parsed.config is not None:
        _hub_cache.put(key, len(body), parsed.config)
    return parsed


COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


async def resolve_hub_revision(
    repo: str, revision: str | None, token: str | None, config: OperatorConfig
) -> str | None:
    """The commit an hf:// revision (branch, tag; default main) names now, from the Hub's model API; a
    40-hex revision is a commit already. None when the Hub cannot say (offline, refused, unknown)."""
    rev = revision or "main"
    if COMMIT_RE.match(rev):
        return rev
    if not config.fetch_hub_config:
        return None
    url = f"{config.hub_endpoint}/api/models/{repo}/revision/{quote(rev, safe='')}"
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        async with (
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session,
            session.get(url, headers=headers) as response,
        ):
            if response.status != 200:
                return None
            answer = json.loads((await response.content.read(MAX_CONFIG_BYTES)).decode("utf-8", "replace"))
    except (aiohttp.ClientError, TimeoutError, ValueError) as error:
        log.info("could not resolve hf://%s@%s to a commit: %s", repo, rev, error)
        return None
    sha = answer.get("sha") if isinstance(answer, dict) else None
    return sha if isinstance(sha, str) and COMMIT_RE.match(sha) else None


async def _read_capped(response: aiohttp.ClientResponse, cap: int = MAX_CONFIG_BYTES) -> bytes | None:
    """The body, or None as soon as it is known to exceed `cap` (Content-Length, or bytes read so far):
    a hostile or broken endpoint never makes the operator hold more than `cap` plus one chunk."""
    if response.content_length is not None and response.content_length > cap:
        return None
    chunks: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_chunked(HUB_READ_CHUNK):
        size += len(chunk)
        if size > cap:
            return None
        chunks.append(chunk)
    return b"".join(chunks)


def _too_big(size: int | None, where: str) -> ModelConfigResult:
    """`size` None: the download stopped at the cap, the real size is unknown."""
    told = f"{size:,} bytes" if size is not None else f"more than {MAX_CONFIG_BYTES:,} bytes"
    return ModelConfigResult(
        None,
        Reason.MODEL_CONFIG_OUT_OF_BOUNDS,
        f"{where} is {told}; a config.json may have at most {MAX_CONFIG_BYTES:,}",
    )


def _depth_of_value(value: Any, limit: int = MAX_CONFIG_DEPTH) -> int:
    """Nesting depth of a decoded value, iteratively (a recursive walk could overflow the stack)."""
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict | list):
            deepest = max(deepest, depth)
            if deepest > limit:
                return deepest
            children = node.values() if isinstance(node, dict) else node
            stack.extend((child, depth + 1) for child in children)
    return deepest


def parse_config_text(raw: str, where: str) -> ModelConfigResult:
    """config.json text -> dict, refusing oversized or deeply nested input with a reason instead of
    raising (json.loads of 100,000 nested brackets raises RecursionError)."""
    size = len(raw.encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        return _too_big(size, where)
    too_deep = ModelConfigResult(
        None, Reason.MODEL_CONFIG_OUT_OF_BOUNDS, f"{where} nests deeper than {MAX_CONFIG_DEPTH} levels"
    )
    try:
        data = json.loads(raw)
    except RecursionError:  # the C decoder gives up at the interpreter's recursion limit, quickly
        return too_deep
    except ValueError as error:
        return ModelConfigResult(None, Reason.MODEL_CONFIG_UNAVAILABLE, f"{where}: {str(error)[:200]}")
    if _depth_of_value(data) > MAX_CONFIG_DEPTH:
        return too_deep
    if not isinstance(data, dict):
        return ModelConfigResult(None, Reason.MODEL_CONFIG_UNAVAILABLE, f"{where} is not a JSON object")
    return ModelConfigResult(data)


SMALL_CONFIG_UNITS = 16 * 1024  # a value within this many nodes + string characters is checked on the loop


def is_small_value(value: Any, budget: int = SMALL_CONFIG_UNITS) -> bool:
    """Whether a decoded value has at most `budget` nodes and string characters together. The walk stops as soon
    as the budget is spent, so the answer costs at most `budget` steps whatever the value's size."""
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        budget -= 1 + (len(node) if isinstance(node, str) else 0)
        if budget < 0:
            return False
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return True


def check_inline_config(inline: dict[str, Any]) -> ModelConfigResult:
    """An inline spec.model.config within the same bounds as a ConfigMap's."""
    if _depth_of_value(inline) > MAX_CONFIG_DEPTH:
        return ModelConfigResult(
            None, Reason.MODEL_CONFIG_OUT_OF_BOUNDS, f"spec.model.config nests deeper than {MAX_CONFIG_DEPTH} levels"
        )
    size = len(json.dumps(inline, ensure_ascii=False).encode("utf-8", "surrogatepass"))
    if size > MAX_CONFIG_BYTES:
        return _too_big(size, "spec.model.config")
    return ModelConfigResult(inline)


async def _parse_off_loop(work: Callable[[], ModelConfigResult], where: str) -> ModelConfigResult:
    """Parsing up to a ConfigMap's 1 MiB stays off the event loop, like planning."""
    try:
        return await off_loop(work)
    except TimeoutError:
        return ModelConfigResult(None, Reason.MODEL_CONFIG_OUT_OF_BOUNDS, f"{where} took too long to parse")


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
        if is_small_value(inline):  # a real config.json (a few KB) costs ~15 us to check: no thread hop
            return check_inline_config(inline)
        return await _parse_off_loop(lambda: check_inline_config(inline), "spec.model.config")
    if config_map:
        name, key = config_map
        cm = await kube.get("ConfigMap", namespace, name)
        raw = ((cm or {}).get("data") or {}).get(key)
        if raw is None:
            return ModelConfigResult(
                None, Reason.MODEL_CONFIG_UNAVAILABLE, f"ConfigMap {name} has no key {key} (expected config.json)"
            )
        where = f"ConfigMap {name}/{key}"
        return await _parse_off_loop(lambda: parse_config_text(raw, where), where)
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


async def pinned_revision(
    kube: Kube, body: dict[str, Any], spec: Any, previous: dict[str, Any] | None, config: OperatorConfig
) -> str | None:
    """hf:// models: the commit the revision names, resolved once per generation (status.resolvedRevision), so
    a branch that moves later does not reload the engines and an edit of the BigModel resolves again."""
    if not spec.model.uri.startswith("hf://"):
        return None
    previous = previous or {}
    if previous.get("resolvedRevision") and previous.get("observedGeneration") == body["metadata"].get("generation"):
        return str(previous["resolvedRevision"])
    token = None
    creds = spec.credentials.hf_token_secret_ref if spec.credentials else None
    if creds:
        token = await read_secret_key(kube, body["metadata"]["namespace"], creds.name, creds.key, config)
    return await resolve_hub_revision(spec.model.uri.removeprefix("hf://"), spec.model.revision, token, config)
