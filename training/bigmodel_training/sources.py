"""Resolving the config's URIs to local paths.

- `local_path` (set by the operator when it mounted the location) always wins.
- pvc://claim/a/b → `$BIGMODEL_MOUNT_ROOT/claim/a/b` (default /mnt/bigmodel), where the operator
  mounts each claim.
- file:///abs/path → /abs/path.
- hf://org/name (models) → a snapshot downloaded with huggingface_hub, token from the env variable
  named by `hf_token_env`; hf://datasets/org/name/path/file.jsonl (data) → that one file.
- http(s):// (data) → http_fetch.py: public addresses only (checked after DNS resolution, on every
  redirect), at most `max_file_bytes`. s3:// (data, models) → boto3 (storage.py), endpoint and
  credentials from AWS_* variables; gs:// (data) → google-cloud-storage when the image has it.
- Every path goes through bigmodel_contract.safe_paths (the rule the operator and serving use too):
  decoded, checked for `..`, and resolved inside its claim's mount so a symlink cannot lead out.
- Outputs: pvc://, file:// or a mounted `local_path`; s3:// is staged in a local folder and uploaded
  (remote_output.py).
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any

from bigmodel_contract.fetch_addresses import UnsafeAddressError
from bigmodel_contract.safe_paths import PathEscapeError, resolve_inside, resolve_local
from bigmodel_training import http_fetch, storage
from bigmodel_training.config import DEFAULT_MOUNT_ROOT, BaseModelSource, DatasetSource, OutputTarget
from bigmodel_training.errors import ConfigError, DatasetError, SourceError, UnsupportedError
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
    if uri.startswith("pvc://"):
        return mount_path(uri)
    try:
        return resolve_local(uri, None)
    except PathEscapeError as exc:
        raise SourceError(f"{uri}: {exc}") from exc


def _located(uri: str, local_path: str | None) -> Path | None:
    """Where the operator mounted `uri` (`local_path`, symlinks resolved inside the claim), else
    `local_path_of(uri)`."""
    if not local_path:
        return local_path_of(uri)
    try:
        return resolve_local(uri, local_path)
    except PathEscapeError as exc:
        raise SourceError(f"{uri} at {local_path}: {exc}") from exc


def _token(env_name: str | None) -> str | None:
    return os.environ.get(env_name) if env_name else None


def resolve_model_dir(source: BaseModelSource, hf_token_env: str | None, scratch: Path) -> Path:
    """A local directory holding the base model's config, weights and tokenizer."""
    path = _located(source.uri, source.local_path)
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
    path = _located(uri, source.local_path)
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
            return http_fetch.fetch_to_file(uri, target, max_bytes=source.max_file_bytes)
        if uri.startswith("s3://"):
            return _from_s3(uri, target)
        if uri.startswith("gs://"):
            return _from_gcs(uri, target)
    except (SourceError, UnsupportedError):
        raise
    except (UnsafeAddressError, PathEscapeError) as exc:  # never better on a retry: the Job fails at once
        raise ConfigError(f"dataset {uri} refused: {exc} (http(s) datasets must be on public addresses)") from exc
    except http_fetch.DownloadTooLargeError as exc:
        raise DatasetError(f"dataset {uri}: {exc}") from exc
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
    path = _located(target.uri, target.local_path)
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
