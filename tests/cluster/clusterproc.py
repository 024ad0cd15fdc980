"""Local processes for the test control plane: start, identify and stop them; probe ports."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path


def start_time(pid: int) -> str | None:
    """Kernel start time of a process; guards against acting on a recycled PID."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def alive(proc: dict) -> bool:
    return start_time(proc["pid"]) == proc["start_time"]


def spawn(name: str, argv: list[str], cwd: Path, logs: Path, env: dict[str, str] | None = None) -> dict:
    """Start a daemon in its own session (immune to the terminal's SIGHUP), logging to a file."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / f"{name}.log", "w") as out:
        proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    for _ in range(100):  # /proc/<pid>/stat appears at once; this is belt and braces
        if (started := start_time(proc.pid)) is not None:
            return {"pid": proc.pid, "start_time": started, "argv": argv}
        time.sleep(0.01)
    raise SystemExit(f"{name} exited at once; see {logs / f'{name}.log'}")


def stop(procs: dict[str, dict], timeout: float = 10) -> dict[str, str]:
    """SIGTERM a group together, SIGKILL what is left after `timeout`; name -> what happened.

    Only processes whose PID still has the recorded start time are signalled.
    """
    outcome: dict[str, str] = {}
    for name, info in procs.items():
        if alive(info):
            os.kill(info["pid"], signal.SIGTERM)
            outcome[name] = "stopped"
    deadline = time.monotonic() + timeout
    while any(alive(procs[name]) for name in outcome) and time.monotonic() < deadline:
        time.sleep(0.1)
    for name in outcome:
        if alive(procs[name]):
            os.kill(procs[name]["pid"], signal.SIGKILL)
            outcome[name] = f"killed after {timeout:.0f}s"
    return outcome


def log_tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text().splitlines()[-lines:])
    except OSError:
        return "(no log)"


def port_free(port: int) -> bool:
    """True when nothing listens on 127.0.0.1:port (TIME_WAIT leftovers do not count)."""
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as Go's listeners do
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def http_get(url: str, context: ssl.SSLContext | None = None) -> tuple[int, str]:
    """(status, body); status 0 when nothing answered."""
    try:
        with urllib.request.urlopen(url, timeout=5, context=context) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode(errors="replace")
    except (OSError, ssl.SSLError) as err:
        return 0, str(err)
