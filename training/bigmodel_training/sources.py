"""Resolving the config's URIs to local paths.

- `local_path` (set by the operator when it mounted the location) always wins.
- pvc://claim/a/b → `$BIGMODEL_MOUNT_ROOT/claim/a/b` (default /mnt/bigmodel), where the operator
  mounts each claim.
- file:///abs/path → /abs/path.
- hf://org/name (models) → a snapshot downloaded with huggingface_hub, token from the env variable
  named by `hf_token_env`; hf://datasets/org/name/path/file.jsonl (data) → that one file.
- http(s):// (data) → downloaded with urllib. s3:// (data, models) → boto3 (storage.py), endpoint and
  credentials from AWS_* variables; gs:// (data) → google-cloud-storage when the image has it.
- Outputs: pvc://, file:// or a mounted `local_path`; s3:// is staged in a local folder and uploaded
  (remote_output.py).
"""

from __future__ import annotations

import importlib
import os
import shutil
import urllib.request
from pathlib import Path
from typing import Any

from bigmodel_operator.safe_paths import PathEscapeError, resolve_inside
from bigmodel_training import storage
from bigmodel_training.config import DEFAULT_MOUNT_ROOT, BaseModelSource, DatasetSource, OutputTarget
from bigmodel_training.errors import SourceError, UnsupportedError
from bigmodel_training.remote_output import RemoteOutput

MOUNT_ROOT_ENV = "BIGMODEL_MOUNT_ROOT"
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.tiktoken", "*.txt", "*.jinja"]


def mount_path(uri: str) -> Path:
    """Where the operator mounts pvc://claim/path; refuses a path that would leave the mount root.

    Admission and the operator already refuse `..` segments; this repeats the check where the file is
    opened, and also catches a symlink on the volume that points outside it.
    """
    rest = uri.removeprefix("pvc://")
    try:
        return resolve_inside(os.environ.get(MOUNT_ROOT_ENV, DEFAULT_MOUNT_ROOT), rest)
    except PathEscapeError as exc:
        raise SourceError(f"{uri}: {exc}") from exc


def local_path_of(uri: str) -> Path | None:
    """The local path of a pvc:// or file:// URI, or None for remote schemes."""
    if uri.startswith("file://"):
        path = uri.removeprefix("file://")
        if ".." in path.split("/"):
            raise SourceError(f"{uri}: a '..' segment is not allowed")
        return Path(path)
    if uri.startswith("pvc://"):
        return mount_path(uri)
    return None


def _token(env_name: str | None) -> str | None:
    return os.environ.get(env_name) if env_name else None


def resolve_model_dir(source: BaseModelSource, hf_token_env: str | None, scratch: Path) -> Path:
    """A local directory holding the base model's config, weights and tokenizer."""
    path = Path(source.local_path) if source.local_path else local_path_of(source.uri)
    if path is not None:
        if not (path / "config.json").is_file():
            raise SourceError(f"base model {source.uri}: no config.json in {path}")
        return path
    if source.uri.startswith("hf://"):
        from huggingface_hub import snapshot_download

        repo = source.uri.removeprefix("hf://")
        try:
            return Path(
                snapshot_download(
                    repo, revision=source.revision, token=_token(hf_token_env), allow_patterns=MODEL_FILES,
                    cache_dir=str(scratch / "hf"),
                )
            )  # fmt: skip
        except Exception as exc:
            hint = "" if _token(hf_token_env) else " (no Hugging Face token given: gated models need one)"
            raise SourceError(f"cannot download {source.uri}: {exc}{hint}") from exc
    if source.uri.startswith("s3://"):
        local = storage.download_prefix(source.uri, storage.cache_dir_for(source.uri), MODEL_FILES)
        if not (local / "config.json").is_file():
            raise SourceError(f"base model {source.uri}: no config.json under this prefix")
        return local
    raise UnsupportedError(f"base model {source.uri}: gs:// models must be mounted by the operator (local_path)")


def resolve_dataset_file(source: DatasetSource, hf_token_env: str | None, scratch: Path) -> Path:
    """A local JSONL file (downloaded into `scratch` when remote)."""
    uri = source.uri
    path = Path(source.local_path) if source.local_path else local_path_of(uri)
    if source.feedback is not None:  # a feedback sink: a directory of records, filtered into chat JSONL
        from bigmodel_training.feedback import feedback_dataset

        return feedback_dataset(source, path, scratch)
    if path is not None:
        if not path.is_file():
            raise SourceError(f"dataset {uri}: {path} is not a file")
        return path
    scratch.mkdir(parents=True, exist_ok=True)
    target = scratch / "dataset.jsonl"
    try:
        if uri.startswith("hf://"):
            return _from_hub(uri, hf_token_env, scratch)
        if uri.startswith(("http://", "https://")):
            with urllib.request.urlopen(uri, timeout=60) as response, open(target, "wb") as out:  # noqa: S310
                shutil.copyfileobj(response, out)
            return target
        if uri.startswith("s3://"):
            return _from_s3(uri, target)
        if uri.startswith("gs://"):
            return _from_gcs(uri, target)
    except (SourceError, UnsupportedError):
        raise
    except Exception as exc:
        raise SourceError(f"cannot download dataset {uri}: {exc}") from exc
    raise UnsupportedError(f"dataset {uri}: unsupported URI scheme")


def _from_hub(uri: str, hf_token_env: str | None, scratch: Path) -> Path:
    from huggingface_hub import hf_hub_download

    parts = uri.removeprefix("hf://").split("/")
    if parts[0] != "datasets" or len(parts) < 4:
        raise SourceError(f"dataset {uri}: expected hf://datasets/<org>/<name>/<file.jsonl>")
    repo, filename = "/".join(parts[1:3]), "/".join(parts[3:])
    return Path(
        hf_hub_download(repo, filename, repo_type="dataset", token=_token(hf_token_env), cache_dir=str(scratch / "hf"))
    )


def _from_s3(uri: str, target: Path) -> Path:
    return storage.download_file(uri, target)


def _from_gcs(uri: str, target: Path) -> Path:
    try:
        storage: Any = importlib.import_module("google.cloud.storage")
    except ImportError as exc:
        raise UnsupportedError(
            "gs:// datasets need google-cloud-storage in the trainer image, or a pvc:// copy"
        ) from exc
    bucket, _, key = uri.removeprefix("gs://").partition("/")
    storage.Client().bucket(bucket).blob(key).download_to_filename(str(target))
    return target


def remote_output(target: OutputTarget, output_dir: Path) -> RemoteOutput | None:
    """The bucket mirror of an s3:// output staged in `output_dir`; None for a local output."""
    if target.local_path or not target.uri.startswith("s3://"):
        return None
    return RemoteOutput(target.uri, output_dir)


def resolve_output_dir(target: OutputTarget) -> Path:
    """The local directory results and checkpoints are written to (created if missing).

    An s3:// output without a mounted `local_path` is staged under the S3 cache folder (one per URI,
    so a restarted container finds its checkpoints) and uploaded by `remote_output`.
    """
    path = Path(target.local_path) if target.local_path else local_path_of(target.uri)
    if path is None and target.uri.startswith("s3://"):
        storage.split_uri(target.uri)
        path = storage.cache_dir_for(target.uri) / "output"
    if path is None:
        raise UnsupportedError(
            f"output {target.uri}: gs:// outputs need a mounted local_path (checkpoints must survive restarts)"
        )
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SourceError(f"cannot create output directory {path}: {exc}") from exc
    return path
