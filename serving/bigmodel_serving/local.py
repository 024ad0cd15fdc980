"""Local mode: the application as the operator renders it, on this machine (`bigmodel serve`).

Starts a local Ray (node IP 127.0.0.1, no dashboard), Serve's HTTP proxy on `host:port` (loopback
by default) and deploys the serveConfigV2 application entries through Serve's declarative API,
the path KubeRay uses, so `deployments` options and `user_config` behave exactly as in a cluster.

API keys: `bigmodel serve` takes the key from `BIGMODEL_API_KEY`, or generates one and prints it
(as Jupyter prints its token); `local_keys_dir` writes it as the key file named `local`.
"""

from __future__ import annotations

import logging
import os
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from bigmodel_serving.args import ServeApplication, parse_application

API_KEY_ENV = "BIGMODEL_API_KEY"
LOCAL_KEY_NAME = "local"
PROGRESS_EVERY_S = 10.0
DEFAULT_START_TIMEOUT_S = 1800.0
# vLLM's CPU engine and the Serve replicas need more logical CPUs than a laptop may have cores.
DEFAULT_NUM_CPUS = 4
RAY_START_ATTEMPTS = 3


@dataclass
class LocalServer:
    """Running local applications; `shutdown()` stops Serve and, if this process started it, Ray."""

    url: str
    app_names: list[str]
    owns_ray: bool
    metrics_urls: dict[str, str] = field(default_factory=dict)  # GET /metrics of each application, by name
    _stopped: bool = field(default=False, repr=False)

    def deploy(self, applications: Sequence[dict[str, Any] | ServeApplication], *, timeout_s: float = 600) -> None:
        """Redeploy: the applications replace the running ones (Serve applies light edits in place)."""
        apps = [_local_metrics(parse_application(app), self._http_options["host"]) for app in applications]
        _apply(apps, self._http_options)
        _wait_running([app.name for app in apps], timeout_s, sys.stderr)
        self.app_names = [app.name for app in apps]
        self.metrics_urls = {app.name: url for app in apps if (url := metrics_url(app)) is not None}

    _http_options: dict[str, Any] = field(default_factory=dict, repr=False)

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        serve.shutdown()
        if self.owns_ray:
            ray.shutdown()


def local_api_key() -> tuple[str, bool]:
    """(key, generated): `BIGMODEL_API_KEY`, or a new random key."""
    key = os.environ.get(API_KEY_ENV, "").strip()
    if key:
        return key, False
    return "bm-" + secrets.token_urlsafe(24), True


def local_keys_dir(key: str, directory: Path | None = None) -> Path:
    """A private directory holding `key` as the key file `local` (the Secret layout in a pod)."""
    target = directory or Path(tempfile.mkdtemp(prefix="bigmodel-keys-"))
    target.mkdir(parents=True, exist_ok=True)
    target.chmod(0o700)
    key_file = target / LOCAL_KEY_NAME
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    return target


def start_local_ray(num_cpus: int | None = None) -> bool:
    """Start Ray on 127.0.0.1 without a dashboard unless it is running; True when started here."""
    import ray

    if ray.is_initialized():
        return False
    # A loaded machine can take longer than Ray's 15 s to start the metrics agent, and longer than the
    # 30 s ray.init waits for the raylet to register (not configurable): wait longer, then try again.
    os.environ.setdefault("RAY_raylet_start_wait_time_s", "120")
    for attempt in range(1, RAY_START_ATTEMPTS + 1):
        try:
            ray.init(
                _node_ip_address="127.0.0.1",
                include_dashboard=False,
                num_cpus=num_cpus if num_cpus is not None else max(DEFAULT_NUM_CPUS, os.cpu_count() or 1),
                logging_level=logging.WARNING,
                log_to_driver=True,
            )
            return True
        except Exception as error:
            if "timed out during startup" not in str(error) or attempt == RAY_START_ATTEMPTS:
                raise
            sys.stderr.write(f"bigmodel: Ray did not start in time (attempt {attempt}); trying again\n")
            ray.shutdown()
    return True


def _local_metrics(app: ServeApplication, host: str) -> ServeApplication:
    """The metrics listener binds the HTTP proxy's host here (loopback by default), not every address."""
    if app.args.metrics is not None and app.args.metrics.host != host:
        metrics = app.args.metrics.model_copy(update={"host": host})
        app = app.model_copy(update={"args": app.args.model_copy(update={"metrics": metrics})})
    return app


def metrics_url(app: ServeApplication) -> str | None:
    listener = app.args.metrics
    return None if listener is None else f"http://{listener.host}:{listener.port}/metrics"


def _apply(apps: list[ServeApplication], http_options: dict[str, Any]) -> None:
    from ray import serve
    from ray.serve.schema import ServeDeploySchema

    config = ServeDeploySchema.model_validate(
        {
            "http_options": http_options,
            "applications": [app.model_dump(mode="json", exclude_none=True) for app in apps],
        }
    )
    client = serve.context._get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running")
    client.deploy_apps(config)


def _wait_running(names: list[str], timeout_s: float, out: TextIO) -> None:
    from ray import serve

    started = time.monotonic()
    last_note = started
    while True:
        statuses = serve.status().applications
        states = {name: statuses[name].status if name in statuses else "NOT_STARTED" for name in names}
        if all(state == "RUNNING" for state in states.values()):
            return
        failed = {name: statuses[name].message for name, state in states.items() if state == "DEPLOY_FAILED"}
        if failed:
            raise RuntimeError("; ".join(f"{name}: {message}" for name, message in failed.items()))
        now = time.monotonic()
        if now - started > timeout_s:
            raise TimeoutError(f"applications not RUNNING after {timeout_s:.0f} s: {states}")
        if now - last_note >= PROGRESS_EVERY_S:
            out.write(f"bigmodel: still starting ({now - started:.0f} s): {states}\n")
            out.flush()
            last_note = now
        time.sleep(0.5)


def run_local(
    applications: Sequence[dict[str, Any] | ServeApplication] | dict[str, Any] | ServeApplication,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    block: bool = True,
    num_cpus: int | None = None,
    request_timeout_s: float | None = None,
    start_timeout_s: float = DEFAULT_START_TIMEOUT_S,
    out: TextIO = sys.stderr,
) -> LocalServer:
    """Serve the application entries at http://host:port until Ctrl-C, or return a handle (`block=False`)."""
    from ray import serve

    from bigmodel_serving.app import build_app

    if isinstance(applications, dict | ServeApplication):
        applications = [applications]
    apps = [_local_metrics(parse_application(app), host) for app in applications]
    for app in apps:
        build_app(app.args)  # bad args fail here, before Ray starts
    owns_ray = start_local_ray(num_cpus)
    timeout = request_timeout_s or max(app.args.request_timeout_s for app in apps) + 5
    http_options = {"host": host, "port": port, "request_timeout_s": timeout}
    serve.start(http_options=http_options)
    urls = {app.name: url for app in apps if (url := metrics_url(app)) is not None}
    names = [app.name for app in apps]
    server = LocalServer(f"http://{host}:{port}", names, owns_ray, urls, _http_options=http_options)
    started = time.monotonic()
    for app in apps:
        out.write(f"bigmodel: loading {app.args.model.served_name} from {app.args.model.uri} (vLLM) ...\n")
    out.flush()
    try:
        _apply(apps, http_options)
        _wait_running(server.app_names, start_timeout_s, out)
    except BaseException:
        server.shutdown()
        raise
    for app in apps:
        prefix = app.route_prefix.rstrip("/")
        out.write(
            f"bigmodel: serving {app.args.model.served_name} at {server.url}{prefix}/v1 "
            f"(ready in {time.monotonic() - started:.0f} s; Ctrl-C to stop)\n"
        )
        if app.name in server.metrics_urls:
            out.write(f"bigmodel: metrics of {app.name} at {server.metrics_urls[app.name]}\n")
    out.flush()
    if not block:
        return server
    stop = threading.Event()
    try:
        stop.wait()
    except KeyboardInterrupt:
        out.write("bigmodel: stopping\n")
    finally:
        server.shutdown()
    return server
