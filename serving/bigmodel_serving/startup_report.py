"""An engine replica's cold start, phase by phase, reported into its BigModel's status.

The replica records what only it can see, with wall-clock times:

    Downloading   our downloader (storage.fetch): bytes done / total, or `cached` when the weight cache had them
    Loading       from the engine's start (its process, imports, then the weights into memory) until vLLM
                  logs "Model loading took ..." (or "Loading weights took ...")
    Compiling     from there until vLLM logs "init engine (profile, create kv cache, warmup model) took ...":
                  profiling, KV cache allocation, torch.compile, CUDA graphs, warm-up
    ready         the engine constructor returned (Ray Serve LLM's LLMServer started)

vLLM's phase ends come from vLLM's own log lines: its engine core runs in a child process whose output
goes to this replica's stdout/stderr files (Ray redirects both), which a thread reads while the engine
starts. When those lines are not found (another vLLM version, output elsewhere), Loading covers the whole
engine start and says so (`source: engine`). Nothing is guessed.

The report is a merge patch of one key of the BigModel's `status.replicaStartups` (the replica id), sent
at each phase change and at most every PROGRESS_EVERY_S while downloading, through the same credentials
and Role as the canary decisions (rollout_report.py). The operator joins it with the pod's own phases
(scheduled, image pulled) into `status.startup` and `status.lastColdStart`. Reporting is best effort: a
failure is logged once and never delays the engine.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

from bigmodel_serving.rollout_report import GROUP_VERSION, SA_DIR, Connection, _call

logger = logging.getLogger("ray.serve")

NAMESPACE_ENV = "BIGMODEL_NAMESPACE"
PROGRESS_EVERY_S = 5.0
TAIL_EVERY_S = 0.5
# vLLM 0.29's log lines (v1/worker/*_model_runner.py, model_loader/*.py, v1/engine/core.py).
LOAD_FINISHED = re.compile(r"Model loading took|Loading weights took")
ENGINE_READY = re.compile(r"init engine \(profile, create kv cache, warmup model\) took")


def stamp(wall: float) -> str:
    """RFC 3339 with milliseconds, UTC."""
    return datetime.fromtimestamp(wall, UTC).strftime("%Y-%m-%dT%H:%M:%S.") + f"{int(wall * 1000) % 1000:03d}Z"


@dataclass
class Phase:
    name: str
    started: float
    finished: float | None = None
    bytes_done: int | None = None
    bytes_total: int | None = None
    cached: bool | None = None
    source: str = "engine"

    def wire(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "startedAt": stamp(self.started), "source": self.source}
        if self.finished is not None:
            out["finishedAt"] = stamp(self.finished)
        for key, value in (("bytesDone", self.bytes_done), ("bytesTotal", self.bytes_total), ("cached", self.cached)):
            if value is not None:
                out[key] = value
        return out


@dataclass
class StartupTimeline:
    """The replica's phases; thread-safe (the log reader, the downloader and the constructor write it)."""

    pod: str | None
    constructed: float
    first_on_pod: bool | None = None
    wall: Callable[[], float] = time.time
    phases: list[Phase] = field(default_factory=list)
    ready: float | None = None
    failed: str | None = None
    on_change: Callable[[bool], None] = lambda urgent: None  # urgent: a phase began or ended
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _current(self, name: str) -> Phase | None:
        return next((p for p in self.phases if p.name == name), None)

    def begin(self, name: str, source: str, at: float | None = None) -> None:
        with self._lock:
            if self._current(name) is not None:
                return
            now = self.wall() if at is None else at
            for phase in self.phases:  # phases do not overlap: a new one ends the one before
                if phase.finished is None:
                    phase.finished = now
            self.phases.append(Phase(name, now, source=source))
        self.on_change(True)

    def end(self, name: str, at: float | None = None) -> None:
        with self._lock:
            phase = self._current(name)
            if phase is None or phase.finished is not None:
                return
            phase.finished = self.wall() if at is None else at
        self.on_change(True)

    def progress(self, done: int, total: int) -> None:
        with self._lock:
            phase = self._current("Downloading")
            if phase is None:
                return
            phase.bytes_done, phase.bytes_total = done, total
        self.on_change(False)

    def downloaded(self, total: int, cached: bool) -> None:
        with self._lock:
            phase = self._current("Downloading")
            if phase is not None:
                phase.bytes_done, phase.bytes_total, phase.cached = total, total, cached
                phase.finished = phase.finished or self.wall()
        self.on_change(True)

    def measured_by(self, name: str, source: str) -> None:
        with self._lock:
            phase = self._current(name)
            if phase is not None:
                phase.source = source

    def finish(self, failed: str | None = None) -> None:
        """The constructor returned (ready) or raised (`failed`); open phases end now (without vLLM's lines,
        Loading covers the whole engine start, measured by the engine)."""
        with self._lock:
            now = self.wall()
            for phase in self.phases:
                if phase.finished is None:
                    phase.finished = now
            if failed is None:
                self.ready = now
            else:
                self.failed = failed[:2000]
        self.on_change(True)

    def report(self) -> dict[str, Any]:
        """One status.replicaStartups entry (bigmodel_operator.api.startup_status.ReplicaStartupReport)."""
        with self._lock:
            out: dict[str, Any] = {
                "constructedAt": stamp(self.constructed),
                "phases": [p.wire() for p in self.phases],
                "updatedAt": stamp(self.wall()),
            }
            if self.pod:
                out["pod"] = self.pod
            if self.first_on_pod is not None:
                out["firstOnPod"] = self.first_on_pod
            if self.ready is not None:
                out["readyAt"] = stamp(self.ready)
            if self.failed is not None:
                out["failed"] = self.failed
            return out


# --------------------------------------------------------------------------------------------
# vLLM's log lines
# --------------------------------------------------------------------------------------------


def own_output_files() -> list[Path]:
    """This process's stdout and stderr when they are regular files (Ray's worker-*.out / *.err)."""
    files = []
    for fd in (1, 2):
        try:
            target = Path(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
        if target.is_file() and target not in files:
            files.append(target)
    return files


def apply_log_line(timeline: StartupTimeline, line: str) -> None:
    """Move the timeline on for one line of vLLM's output."""
    if LOAD_FINISHED.search(line):
        timeline.measured_by("Loading", "vllm")
        timeline.begin("Compiling", "vllm")  # ends Loading
    elif ENGINE_READY.search(line):
        timeline.end("Compiling")


class LogFollower:
    """Reads new lines of the given files in a thread until stopped, feeding `apply_log_line`."""

    def __init__(self, timeline: StartupTimeline, files: list[Path]) -> None:
        self.timeline = timeline
        self.offsets = {path: path.stat().st_size for path in files if path.exists()}
        self.partial = dict.fromkeys(self.offsets, "")
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="bigmodel-startup-log", daemon=True)

    def start(self) -> LogFollower:
        if self.offsets:
            self.thread.start()
        return self

    def stop(self) -> None:
        self.stopped.set()
        if self.thread.is_alive():
            self.thread.join(timeout=5)
        self.poll()  # the last lines written before the engine returned

    def _run(self) -> None:
        while not self.stopped.wait(TAIL_EVERY_S):
            self.poll()

    def poll(self) -> None:
        for path, offset in list(self.offsets.items()):
            try:
                with open(path, "rb") as handle:
                    handle.seek(offset)
                    data = handle.read()
            except OSError:
                continue
            self.offsets[path] = offset + len(data)
            text = self.partial[path] + data.decode("utf-8", "replace")
            lines = text.split("\n")
            self.partial[path] = lines.pop()
            for line in lines:
                apply_log_line(self.timeline, line)


# --------------------------------------------------------------------------------------------
# sending the report
# --------------------------------------------------------------------------------------------


POD_MARKER = Path("/tmp/.bigmodel-engine-started")  # /tmp is the pod's own emptyDir


def first_engine_on_pod(marker: Path = POD_MARKER) -> bool:
    """True for the first engine replica started in this pod (later ones find the marker)."""
    try:
        with open(marker, "x"):
            return True
    except FileExistsError:
        return False
    except OSError:
        return True


def report_target(app_name: str) -> tuple[str, str] | None:
    """(namespace, BigModel) this replica reports to: the BigModel named like the Serve application, in
    the pod's namespace (BIGMODEL_NAMESPACE in tests). None outside a cluster without BIGMODEL_KUBECONFIG."""
    namespace = os.environ.get(NAMESPACE_ENV)
    if not namespace:
        try:
            namespace = (SA_DIR / "namespace").read_text().strip()
        except OSError:
            return None
    if not (os.environ.get("BIGMODEL_KUBECONFIG") or os.environ.get("KUBERNETES_SERVICE_HOST")):
        return None
    return namespace, app_name


class StatusReporter:
    """Merge-patches `status.<field>.<key>` (or `status.<field>` without a key) of a BigModel from a
    background thread, coalescing updates."""

    def __init__(
        self, namespace: str, bigmodel: str, field_name: str, key: str | None, connection: Connection | None = None
    ) -> None:
        self.path = f"/apis/{GROUP_VERSION}/namespaces/{quote(namespace)}/bigmodels/{quote(bigmodel)}/status"
        self.field_name, self.key = field_name, key
        self._connection = connection
        self._pending: dict[str, Any] | None = None
        self._wake = threading.Condition()
        self._last_sent = 0.0
        self._warned = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name=f"bigmodel-{field_name}-report", daemon=True)
        self._thread.start()

    def submit(self, entry: dict[str, Any] | None, urgent: bool = True) -> None:
        """Queue the latest entry (None removes the key); non-urgent ones wait up to PROGRESS_EVERY_S."""
        with self._wake:
            self._pending = {"entry": entry, "urgent": urgent or (self._pending or {}).get("urgent", False)}
            self._wake.notify()

    def close(self, timeout_s: float = 10.0) -> None:
        """Send what is queued, then stop."""
        with self._wake:
            self._closed = True
            self._wake.notify()
        self._thread.join(timeout=timeout_s)

    def send(self, entry: dict[str, Any] | None) -> bool:
        try:
            connection = self._connection or Connection.from_environment()
            self._connection = connection
            value = {self.key: entry} if self.key is not None else entry
            patch = {"status": {self.field_name: value}}
            _call(connection, "PATCH", self.path, patch, "application/merge-patch+json")
        except Exception as error:
            if not self._warned:
                logger.warning("bigmodel: could not report %s to %s: %s", self.field_name, self.path, error)
                self._warned = True
            return False
        return True

    def _run(self) -> None:
        while True:
            with self._wake:
                while self._pending is None and not self._closed:
                    self._wake.wait()
                if self._pending is None:
                    return
                wait = PROGRESS_EVERY_S - (time.monotonic() - self._last_sent)
                if not self._pending["urgent"] and wait > 0 and not self._closed:
                    self._wake.wait(wait)
                    continue
                pending, self._pending = self._pending, None
            self._last_sent = time.monotonic()
            self.send(pending["entry"])
