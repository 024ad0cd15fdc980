"""The dataset as a memory-mapped, pre-tokenized cache, built by several processes and reused.

A JSONL file of many GB must not need its size in memory, and the GPUs must not wait while one
process tokenizes it. So the file is streamed in chunks of `CHUNK_LINES` lines through a pool of
worker processes (each validates, redacts and tokenizes its chunk with the run's tokenizer), and
the results are appended, in file order, to flat files that every rank then maps read-only:

    <root>/<key>/ids.i32       token ids of every example, concatenated (int32)
                 trained.u8    1 where the token is a training target (label = id), 0 where it is -100
                 offsets.i64   n + 1 offsets of the examples into the two files above
                 lines.i64     the JSONL line of each example (defects name it)
                 meta.json     counts, redactions, how long it took
                 COMPLETE      written last; only a complete cache is used

`key` is a digest of the dataset's sha256, the tokenizer's files (vocabulary, merges, special
tokens, chat template), the format, the redaction switch and `RENDER_VERSION`. A retried pod, a
resumed run or another rank on the same node finds the cache and skips tokenizing; anything that
changes the token ids changes the key. Memory while building: one chunk per worker in flight plus
8 bytes per example for duplicate detection and 16 for offsets and line numbers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bigmodel_training.dataset import (
    DEFAULT_MAX_LINE_BYTES,
    TEMPLATE,
    TOO_FEW,
    TOO_LONG,
    Defect,
    format_report,
    read_lines,
    validate_lines,
)
from bigmodel_training.errors import DatasetError
from bigmodel_training.render import IGNORE_INDEX, Tokenized

log = logging.getLogger(__name__)
CACHE_ENV = "BIGMODEL_TOKEN_CACHE"
RENDER_VERSION = 1  # bump when render.py changes the ids or labels it produces
CHUNK_LINES = 2048
MAX_DEFAULT_WORKERS = 8
COMPLETE = "COMPLETE"
TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "vocab.txt", "merges.txt", "tokenizer.model", "spiece.model", "chat_template.jinja", "chat_template.json",
)  # fmt: skip


def default_root() -> Path:
    """Where caches live: $BIGMODEL_TOKEN_CACHE, else ~/.cache/bigmodel/tokens (the pod's cache volume)."""
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else Path.home() / ".cache" / "bigmodel" / "tokens"


def available_cpus() -> int:
    """CPUs this process may use: the cgroup's CPU quota when there is one (a pod's limit), else affinity."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def default_workers() -> int:
    """Preprocessing workers when the config does not say: the usable CPUs, at most 8."""
    return min(MAX_DEFAULT_WORKERS, available_cpus())


def tokenizer_digest(tokenizer_dir: Path) -> str:
    """A digest of every file that decides how text becomes token ids."""
    digest = hashlib.sha256()
    for name in TOKENIZER_FILES:
        path = tokenizer_dir / name
        if path.is_file():
            digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def cache_key(dataset_sha256: str, tokenizer_dir: Path, fmt: str, redact: bool) -> str:
    """The cache's directory name for this dataset content, tokenizer and rendering."""
    parts = {
        "dataset": dataset_sha256, "tokenizer": tokenizer_digest(tokenizer_dir), "format": fmt,
        "redact": redact, "render": RENDER_VERSION,
    }  # fmt: skip
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:24]


# ----------------------------------------------------------------------------------------------
# reading a cache
# ----------------------------------------------------------------------------------------------


class TokenCache:
    """A complete cache, mapped read-only: `cache[i]` is example i as a `Tokenized` of numpy arrays."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.meta: dict[str, Any] = json.loads((directory / "meta.json").read_text())
        self.offsets = np.fromfile(directory / "offsets.i64", dtype=np.int64)
        self.lines = np.fromfile(directory / "lines.i64", dtype=np.int64)
        tokens = int(self.offsets[-1])
        # np.memmap refuses empty files; a cache always holds at least one token.
        self.ids = np.memmap(directory / "ids.i32", dtype=np.int32, mode="r", shape=(tokens,))
        self.trained = np.memmap(directory / "trained.u8", dtype=np.uint8, mode="r", shape=(tokens,))
        self.lengths = np.diff(self.offsets)
        starts = self.offsets[:-1]
        # labels[0] of every example is -100 (render.py), so its trained flag is 0 as well.
        self.loss_counts = np.add.reduceat(self.trained, starts).astype(np.int64) if len(starts) else self.lengths

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> Tokenized:
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        ids = np.asarray(self.ids[start:stop], dtype=np.int64)
        labels = np.where(self.trained[start:stop] == 1, ids, IGNORE_INDEX)
        return Tokenized(ids, labels)  # type: ignore[arg-type]

    @property
    def redactions(self) -> dict[str, int]:
        """PII placeholders inserted while the cache was built, by type."""
        return dict(self.meta.get("redactions") or {})

    def subset(self, indices: Sequence[int]) -> TokenSubset:
        """The examples at `indices`, in that order (a train or eval split)."""
        return TokenSubset(self, np.asarray(indices, dtype=np.int64))


@dataclass
class TokenSubset:
    """Some examples of a `TokenCache` (`lengths` and `loss_counts` are per example of the subset)."""

    cache: TokenCache
    indices: np.ndarray

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> Tokenized:
        return self.cache[int(self.indices[index])]

    def __iter__(self) -> Iterator[Tokenized]:
        return (self[i] for i in range(len(self)))

    @property
    def lengths(self) -> np.ndarray:
        return self.cache.lengths[self.indices]

    @property
    def loss_counts(self) -> np.ndarray:
        return self.cache.loss_counts[self.indices]


def check(cache: TokenCache, max_seq_length: int, min_examples: int) -> None:
    """Defects that depend on the run's settings, not on the cache: too long, too few, nothing to learn."""
    defects = [
        Defect(int(cache.lines[i]), TOO_LONG, f"{int(n)} tokens, more than max_seq_length {max_seq_length}")
        for i in np.flatnonzero(cache.lengths > max_seq_length)
        for n in (cache.lengths[i],)
    ]
    if len(cache) < min_examples:
        defects.append(Defect(0, TOO_FEW, f"{len(cache)} valid example(s); at least {min_examples} needed"))
    if defects:
        raise DatasetError(format_report(defects, examples=len(cache), lines=int(cache.meta.get("lines", 0))))
    no_loss = [int(cache.lines[i]) for i in np.flatnonzero(cache.loss_counts == 0)]
    if no_loss:
        raise DatasetError(f"examples with nothing to learn (no completion tokens) on lines {no_loss[:20]}")


# ----------------------------------------------------------------------------------------------
# building a cache: worker processes
# ----------------------------------------------------------------------------------------------


@dataclass
class ChunkResult:
    """What one worker returns for one chunk of lines."""

    ids: np.ndarray
    trained: np.ndarray
    lengths: np.ndarray
    lines: np.ndarray
    keys: list[int]
    defects: list[Defect] = field(default_factory=list)
    redactions: dict[str, int] = field(default_factory=dict)
    realigned: int = 0
    last_line: int = 0


_WORKER: dict[str, Any] = {}


def _init_worker(tokenizer_dir: str, fmt: str, redact: bool, max_line_bytes: int) -> None:
    """Load the tokenizer once per worker process."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are the parallelism
    from bigmodel_training.modeling import load_tokenizer
    from bigmodel_training.render import Renderer

    _WORKER.update(
        renderer=Renderer(load_tokenizer(tokenizer_dir)), fmt=fmt, redact=redact, max_line_bytes=max_line_bytes
    )


def _work(chunk: list[tuple[int, bytes | None]]) -> ChunkResult:
    """Validate, redact and tokenize one chunk (in a worker, or in-process with one worker)."""
    from bigmodel_training.data import redact_examples
    from bigmodel_training.render import TemplateError

    renderer = _WORKER["renderer"]
    checked = validate_lines(chunk, _WORKER["fmt"], min_examples=0, max_line_bytes=_WORKER["max_line_bytes"])
    defects = list(checked.defects)
    raw_keys = [example.short_key() for example in checked.examples]  # duplicates are judged before redaction
    redactions = redact_examples(checked.examples) if _WORKER["redact"] else {}
    realigned_before = renderer.realigned
    ids: list[np.ndarray] = []
    trained: list[np.ndarray] = []
    lengths, lines, keys = [], [], []
    for example, key in zip(checked.examples, raw_keys, strict=True):
        try:
            tokenized = renderer.tokenize(example)
        except TemplateError as exc:
            defects.append(Defect(example.line, TEMPLATE, str(exc)))
            continue
        row = np.asarray(tokenized.input_ids, dtype=np.int32)
        ids.append(row)
        trained.append((np.asarray(tokenized.labels) != IGNORE_INDEX).astype(np.uint8))
        lengths.append(len(row))
        lines.append(example.line)
        keys.append(key)
    return ChunkResult(
        ids=np.concatenate(ids) if ids else np.zeros(0, np.int32),
        trained=np.concatenate(trained) if trained else np.zeros(0, np.uint8),
        lengths=np.asarray(lengths, dtype=np.int64),
        lines=np.asarray(lines, dtype=np.int64),
        keys=keys,
        defects=defects,
        redactions=redactions,
        realigned=renderer.realigned - realigned_before,
        last_line=chunk[-1][0] if chunk else 0,
    )


def _chunks(path: Path, max_line_bytes: int) -> Iterator[list[tuple[int, bytes | None]]]:
    chunk: list[tuple[int, bytes | None]] = []
    for item in read_lines(path, max_line_bytes):
        chunk.append(item)
        if len(chunk) >= CHUNK_LINES:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _results(
    path: Path, tokenizer_dir: Path, fmt: str, redact: bool, max_line_bytes: int, workers: int
) -> Iterator[ChunkResult]:
    """Chunk results in file order, at most 2 × workers chunks in flight."""
    if workers <= 1:
        _init_worker(str(tokenizer_dir), fmt, redact, max_line_bytes)
        yield from (_work(chunk) for chunk in _chunks(path, max_line_bytes))
        return
    import multiprocessing

    # spawn, not fork: the parent has torch's and the tokenizer's threads running.
    context = multiprocessing.get_context("spawn")
    initargs = (str(tokenizer_dir), fmt, redact, max_line_bytes)
    with ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=initargs) as pool:
        pending: deque[Future[ChunkResult]] = deque()
        for chunk in _chunks(path, max_line_bytes):
            pending.append(pool.submit(_work, chunk))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


@dataclass
class BuildStats:
    """How a cache was obtained (logged and returned for the benchmark)."""

    key: str
    built: bool
    examples: int
    tokens: int
    seconds: float
    workers: int

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.seconds if self.seconds > 0 else 0.0


def build(
    dataset_file: Path,
    tokenizer_dir: Path,
    *,
    fmt: str,
    redact: bool,
    dataset_sha256: str,
    root: Path | None = None,
    workers: int | None = None,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> tuple[TokenCache, BuildStats]:
    """Open the cache for this dataset and tokenizer, building it first when there is none.

    Raises DatasetError (with line numbers) for examples that cannot be tokenized, and leaves no
    cache behind then. Length limits are checked afterwards by `check` (they depend on the run).
    """
    root = root or default_root()
    key = cache_key(dataset_sha256, tokenizer_dir, fmt, redact)
    final = root / key
    workers = workers or default_workers()
    started = time.perf_counter()
    if (final / COMPLETE).is_file():
        cache = TokenCache(final)
        stats = BuildStats(key, False, len(cache), int(cache.offsets[-1]), time.perf_counter() - started, 0)
        log.info("token cache %s: %d examples, %d tokens (reused)", final, stats.examples, stats.tokens)
        return cache, stats
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        meta = _write(tmp, _results(dataset_file, tokenizer_dir, fmt, redact, max_line_bytes, workers))
        meta.update(key=key, workers=workers, seconds=round(time.perf_counter() - started, 3))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
        (tmp / COMPLETE).write_text(key + "\n")
        if final.exists():  # another process finished the same cache meanwhile: theirs is as good
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            os.rename(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    cache = TokenCache(final)
    stats = BuildStats(key, True, len(cache), int(cache.offsets[-1]), time.perf_counter() - started, workers)
    log.info(
        "token cache %s: %d examples, %d tokens in %.1f s with %d worker(s) (%.0f tokens/s)",
        final, stats.examples, stats.tokens, stats.seconds, workers, stats.tokens_per_second,
    )  # fmt: skip
    return cache, stats


def _write(directory: Path, results: Iterator[ChunkResult]) -> dict[str, Any]:
    """Append every chunk's examples to the cache files; raise DatasetError on any defect."""
    from bigmodel_training.dataset import DUPLICATE
    from bigmodel_training.redact import merge_counts

    seen: dict[int, int] = {}
    defects: list[Defect] = []
    redactions: dict[str, int] = {}
    examples = tokens = realigned = last_line = 0
    with (
        open(directory / "ids.i32", "wb") as ids_file,
        open(directory / "trained.u8", "wb") as trained_file,
        open(directory / "lengths.tmp", "wb") as lengths_file,
        open(directory / "lines.i64", "wb") as lines_file,
    ):
        for result in results:
            defects.extend(result.defects)
            merge_counts(redactions, result.redactions)
            realigned += result.realigned
            last_line = max(last_line, result.last_line)
            for key, line in zip(result.keys, result.lines.tolist(), strict=True):
                if key in seen:
                    defects.append(Defect(line, DUPLICATE, f"duplicate of line {seen[key]}"))
                else:
                    seen[key] = line
            if defects:
                continue  # the run fails; keep reading to report every defect
            ids_file.write(result.ids.tobytes())
            trained_file.write(result.trained.tobytes())
            lengths_file.write(result.lengths.tobytes())
            lines_file.write(result.lines.tobytes())
            examples += len(result.lengths)
            tokens += int(result.lengths.sum())
    if defects:
        raise DatasetError(format_report(defects, examples=examples, lines=last_line))
    if tokens == 0:
        raise DatasetError(format_report([Defect(0, TOO_FEW, "no valid examples")], lines=last_line))
    lengths = np.fromfile(directory / "lengths.tmp", dtype=np.int64)
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    offsets.tofile(directory / "offsets.i64")
    (directory / "lengths.tmp").unlink()
    if realigned:
        log.warning(
            "the chat template is not prefix-consistent (e.g. Qwen3's empty <think> block on the last turn only): "
            "the assistant turns of %d multi-turn example(s) were located by their content; all of them are trained",
            realigned,
        )
    return {
        "examples": examples, "tokens": tokens, "lines": last_line, "redactions": redactions, "realigned": realigned,
    }  # fmt: skip
