"""`bigmodel serve FILE.yaml`: the same manifest, the same rendered application, served on this machine's CPU."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import yaml

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import Placement, placement
from bigmodel_operator.builders.serve_args import render_application
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import load_config

FEEDBACK_DIR_ENV = "BIGMODEL_FEEDBACK_DIR"


def local_feedback_dir(name: str) -> Path:
    """Where `bigmodel serve` writes feedback of a pvc sink: $BIGMODEL_FEEDBACK_DIR, or ./bigmodel-feedback/<name>."""
    return Path(os.environ.get(FEEDBACK_DIR_ENV) or Path.cwd() / "bigmodel-feedback" / name).absolute()


MAX_LOCAL_CONFIG_BYTES = 256 * 1024


def local_model_config(spec: BigModelSpec) -> dict[str, Any] | None:
    """The model's config.json: inline in the manifest, else the file next to a file:// model on this machine."""
    if spec.model.config:
        return dict(spec.model.config)
    if not spec.model.uri.startswith("file://"):
        return None
    path = Path(unquote(urlparse(spec.model.uri).path)) / "config.json"
    try:
        if path.stat().st_size > MAX_LOCAL_CONFIG_BYTES:
            return None
        loaded = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return loaded if isinstance(loaded, dict) else None


def local_application(
    manifest: dict[str, Any], keys_dir: str | None = None, feedback_dir: Path | None = None
) -> dict[str, Any]:
    """The application the operator would render, adjusted for one CPU replica on a laptop.

    Keys: the manifest's `auth.mode: none` serves openly; otherwise `keys_dir` holds the key files
    (no Secret to mount here). Feedback with a pvc sink goes to `feedback_dir` (default
    `local_feedback_dir`); an s3:// sink stays as it is.
    """
    spec = BigModelSpec.model_validate(manifest["spec"])
    name = manifest["metadata"]["name"]
    config = load_config()
    planned = placement(spec, None, local_model_config(spec))
    place = Placement(
        planned.engine, 1, 1, planned.max_model_len, on_gpu=False, tool_call_parser=planned.tool_call_parser
    )
    app = render_application(name, spec, place, Mounts(root=config.model_mount_root), config)
    for deployment in app["deployments"]:
        target = deployment["autoscaling_config"]["target_ongoing_requests"]
        deployment["autoscaling_config"] = {"min_replicas": 1, "max_replicas": 1, "target_ongoing_requests": target}
        user_config = deployment["user_config"]
        if "auth" in user_config and user_config["auth"]["mode"] != "none":
            user_config["auth"] = {"mode": "api_keys", "keys_dir": keys_dir} if keys_dir else {"mode": "none"}
        if "sink_path" in user_config.get("feedback", {}):
            user_config["feedback"]["sink_path"] = str(feedback_dir or local_feedback_dir(name))
    return app


def _local_keys_dir() -> str:
    """A private directory with one key file: $BIGMODEL_API_KEY, or a generated key printed once."""
    from bigmodel_serving.local import API_KEY_ENV, local_api_key, local_keys_dir

    key, generated = local_api_key()
    if generated:
        print(f"bigmodel: API key (set {API_KEY_ENV} to choose one): {key}", file=sys.stderr)
    return str(local_keys_dir(key))


def serve_manifest(path: Path, *, host: str, port: int | None = None) -> int:
    """Serve the first BigModel in `path` until Ctrl-C, on `port` (default: the operator config's serve_port),
    under the same route prefix as in the cluster (`spec.expose.ingress.path`, default /)."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "BigModel"]
    if not docs:
        print(f"bigmodel: {path} holds no BigModel", file=sys.stderr)
        return 2
    spec = BigModelSpec.model_validate(docs[0]["spec"])
    open_endpoint = bool(spec.auth and spec.auth.mode == "none")
    app = local_application(docs[0], None if open_endpoint else _local_keys_dir())
    uri = app["args"]["model"]["uri"]
    local = app["args"]["model"].get("local_path")
    if local and not Path(local).exists():
        print(
            f"bigmodel: {uri} does not exist on this machine. For the tiny example run:\n"
            f"  bigmodel dev tiny-model {local}",
            file=sys.stderr,
        )
        return 2
    from bigmodel_serving.local import run_local

    ingress = next(d for d in app["deployments"] if d["name"] == "BigModelIngress")
    if sink := ingress["user_config"].get("feedback", {}).get("sink_path"):
        print(f"bigmodel: feedback (POST /v1/feedback) is written to {sink}", file=sys.stderr)
    run_local(app, host=host, port=load_config().serve_port if port is None else port, block=True)
    return 0
