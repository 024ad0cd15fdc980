"""The Job's entrypoint as a real process: exit codes, termination messages, kill and resume."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bigmodel_training.checkpoint import complete_checkpoints
from bigmodel_training.config import TrainerConfig
from bigmodel_training.errors import EXIT_CONFIG, EXIT_DATASET, EXIT_TERMINATED, EXIT_UNSUPPORTED


def _start(
    config: TrainerConfig, tmp_path: Path, name: str, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[bytes], Path]:
    config_file = tmp_path / f"{name}.json"
    config_file.write_text(config.to_json())
    termination = tmp_path / f"{name}.termination-log"
    env = {**os.environ, **(env or {}), "BIGMODEL_TERMINATION_LOG": str(termination), "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        [sys.executable, "-m", "bigmodel_training", "--config", str(config_file)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    return process, termination


# Generous: on a loaded 2-core machine importing torch and transformers alone took 80 s (measured).
STARTUP_S = 600


def _finish(process: subprocess.Popen[bytes], timeout: float = STARTUP_S) -> tuple[int, str]:
    output, _ = process.communicate(timeout=timeout)
    return process.returncode, output.decode("utf-8", "replace")


def _exits(
    config: TrainerConfig, tmp_path: Path, name: str, expected: int, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Runs the trainer on `config` to its end, which must be exit code `expected`: its termination record."""
    process, termination = _start(config, tmp_path, name, env)
    code, output = _finish(process)
    assert code == expected, output
    return dict(json.loads(termination.read_text()))


def test_qlora_on_cpu_fails_clearly(make_config: Callable[..., TrainerConfig], tmp_path: Path) -> None:
    message = _exits(make_config(method={"type": "qlora"}), tmp_path, "qlora", EXIT_UNSUPPORTED)
    assert message["reason"] == "Error"
    assert "CUDA GPU" in message["message"]
    assert "method.type: lora" in message["message"]


def test_invalid_dataset_fails_before_training_with_line_numbers(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.jsonl"
    good = '{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}'
    bad.write_text("\n".join([good, "{not json", '{"messages": [{"role": "assistant", "content": "x"}]}', good]) + "\n")
    digest = hashlib.sha256(bad.read_bytes()).hexdigest()
    config = make_config(dataset={"uri": f"file://{bad}", "min_examples": 1})
    message = _exits(config, tmp_path, "bad-data", EXIT_DATASET)
    assert message["reason"] == "DatasetInvalid"
    assert "line 2: bad_json" in message["message"]
    assert "line 3: role_order" in message["message"]
    assert "line 4: duplicate: duplicate of line 1" in message["message"]
    assert hashlib.sha256(bad.read_bytes()).hexdigest() == digest
    assert not (tmp_path / "out" / "checkpoints").exists()


def test_over_length_examples_are_refused_with_their_lines(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    config = make_config(hyperparameters={"max_seq_length": 20})
    message = _exits(config, tmp_path, "too-long", EXIT_DATASET)["message"]
    assert "line 1: too_long:" in message
    assert "more than max_seq_length 20" in message


def test_sigkill_then_restart_resumes_from_the_last_checkpoint(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    config = make_config(hyperparameters={"max_steps": 40}, checkpoint={"every_steps": 5, "keep": 2})
    out = Path(config.output.uri.removeprefix("file://"))
    process, _ = _start(config, tmp_path, "killed")
    deadline = time.monotonic() + STARTUP_S
    while not complete_checkpoints(out) and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    code, output = _finish(process)
    assert code == -signal.SIGKILL, f"the run ended before it could be killed: {output[-2000:]}"
    saved = complete_checkpoints(out)[-1][0]
    assert not (out / "metrics.json").exists()

    process, _ = _start(config, tmp_path, "resumed")
    code, output = _finish(process)
    assert code == 0, output
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["resumed_from_step"] is not None
    assert metrics["resumed_from_step"] >= saved
    assert metrics["steps"] == 40
    assert [h["step"] for h in metrics["loss_curve"]] == list(range(1, 41))


def test_sigterm_saves_a_checkpoint_and_exits_for_a_retry(
    make_config: Callable[..., TrainerConfig], tmp_path: Path, wait_for_step: Callable[..., None]
) -> None:
    config = make_config(hyperparameters={"max_steps": 100000}, checkpoint={"every_steps": 100000})
    out = Path(config.output.uri.removeprefix("file://"))
    process, termination = _start(config, tmp_path, "preempted")
    wait_for_step(out, process, 3, STARTUP_S)
    process.send_signal(signal.SIGTERM)
    code, output = _finish(process)
    assert code == EXIT_TERMINATED, output
    assert complete_checkpoints(out), "a checkpoint is written on SIGTERM"
    assert "SIGTERM" in json.loads(termination.read_text())["message"]


class _Recorder:
    """An HTTP server on `host` (default: every local address) that records the paths it is asked for (and
    serves nothing)."""

    def __init__(self, host: str = "0.0.0.0") -> None:
        import http.server
        import threading

        seen: list[str] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(self.path)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.seen = seen
        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def __enter__(self) -> _Recorder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_dataset_on_an_internal_address_is_refused_before_any_request(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    """Issue 21 (SSRF): the real trainer process, given http://127.0.0.1 (loopback, refused like the cloud
    metadata address and private ranges), fails at once with exit 2 and never sends the request."""
    with _Recorder("127.0.0.1") as recorder:
        uri = f"http://127.0.0.1:{recorder.port}/latest/meta-data/iam/security-credentials/"
        message = _exits(make_config(dataset={"uri": uri}), tmp_path, "ssrf", EXIT_CONFIG)["message"]
    assert "loopback" in message and "refused" in message, message
    assert recorder.seen == [], "the trainer must not have sent the request"


def test_a_dataset_host_name_that_resolves_to_an_internal_address_is_refused(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    """Issue 21 (SSRF after DNS): a host *name* that passes every literal check but resolves to an internal
    address (here this machine's own name, which /etc/hosts maps to loopback) is refused by the real trainer
    process after resolving it, before any connection."""
    import socket

    import pytest

    from bigmodel_contract.fetch_addresses import literal_host_problem, refused_address

    host = socket.gethostname()
    try:
        address = socket.getaddrinfo(host, 80, type=socket.SOCK_STREAM)[0][4][0]
    except OSError:
        pytest.skip(f"this machine's name {host!r} does not resolve")
    if literal_host_problem(host) or not refused_address(str(address)):
        pytest.skip(f"{host!r} is refused by name alone or resolves to a public address ({address})")
    with _Recorder() as recorder:
        uri = f"http://{host}:{recorder.port}/train.jsonl"
        message = _exits(make_config(dataset={"uri": uri}), tmp_path, "ssrf-dns", EXIT_CONFIG)["message"]
    assert host in message and "refused" in message, message
    assert recorder.seen == [], "the trainer must not have connected"


def test_a_dataset_symlinked_out_of_its_claim_is_refused_before_it_is_read(
    make_config: Callable[..., TrainerConfig], tmp_path: Path
) -> None:
    """Issue 21 (one path rule, symlinks resolved where the file is read): on the claim's volume the dataset file
    is a symlink to a file outside the claim; the real trainer process refuses it and trains on nothing."""
    from bigmodel_training.errors import EXIT_IO

    mount = tmp_path / "mnt"
    (mount / "data").mkdir(parents=True)
    outside = tmp_path / "outside.jsonl"
    outside.write_text((tmp_path / "train.jsonl").read_text())  # a valid dataset: reading it would train
    (mount / "data" / "train.jsonl").symlink_to(outside)
    config = make_config(dataset={"uri": "pvc://data/train.jsonl"})
    message = _exits(config, tmp_path, "symlink", EXIT_IO, env={"BIGMODEL_MOUNT_ROOT": str(mount)})["message"]
    assert "outside" in message and "pvc://data/train.jsonl" in message, message
    assert not complete_checkpoints(tmp_path / "out"), "nothing may have been trained"
