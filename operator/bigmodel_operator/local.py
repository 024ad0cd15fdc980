"""`bigmodel serve FILE.yaml`: the same manifest, the same rendered args, served on this machine's CPU."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from bigmodel_operator.api import BigModelSpec
from bigmodel_operator.builders.placement import placement
from bigmodel_operator.builders.serve_args import render_serve_args
from bigmodel_operator.builders.volumes import Mounts
from bigmodel_operator.config import load_config


def local_serve_args(manifest: dict[str, Any]) -> dict[str, Any]:
    """The serve args the operator would render, adjusted for one process on a laptop."""
    spec = BigModelSpec.model_validate(manifest["spec"])
    name = manifest["metadata"]["name"]
    config = load_config()
    place = placement(spec, None)
    args = render_serve_args(name, spec, place, Mounts(root=config.model_mount_root), config)
    args["scaling"] = {
        "min_replicas": 1,
        "max_replicas": 1,
        "target_ongoing_requests": args["scaling"]["target_ongoing_requests"],
    }
    args["replica_resources"] = {"num_gpus": 0, "num_cpus": 1}
    if spec.auth and spec.auth.api_keys_secret_ref:
        # No Secret volume on a laptop: serve without auth and say so.
        args["auth"] = {"api_keys_file": None}
        print("bigmodel: note: spec.auth is ignored locally (no Secret to mount)", file=sys.stderr)
    return args


def serve_manifest(path: Path, *, host: str, port: int) -> int:
    """Serve the first BigModel in `path` until Ctrl-C."""
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d and d.get("kind") == "BigModel"]
    if not docs:
        print(f"bigmodel: {path} holds no BigModel", file=sys.stderr)
        return 2
    args = local_serve_args(docs[0])
    uri = args["model"]["uri"]
    local = args["model"].get("local_path")
    if local and not Path(local).exists():
        print(
            f"bigmodel: {uri} does not exist on this machine. For the tiny example run:\n"
            f"  bigmodel dev tiny-model {local}",
            file=sys.stderr,
        )
        return 2
    if args["engine"] == "vllm":
        print(
            "bigmodel: note: the vllm engine needs a CUDA GPU; use runtime.engine: transformers on CPU", file=sys.stderr
        )
    from bigmodel_serving.local import run_local

    run_local(args, host=host, port=port, block=True)
    return 0
