"""Local mode: serve the same app on a laptop (`bigmodel serve FILE.yaml` calls `run_local`).

Starts a local Ray (node IP 127.0.0.1, no dashboard), Serve's HTTP proxy on `host:port`
(loopback by default), and the application; prints progress while the model loads.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, TextIO

from bigmodel_serving.app import build_app
from bigmodel_serving.args import ServeArgs, parse_serve_args
from bigmodel_serving.engines import EngineFactory

LOCAL_APP_NAME = "bigmodel"
PROGRESS_EVERY_S = 5.0


@dataclass
class LocalServer:
    """A running local server; `shutdown()` stops Serve and, if this process started it, Ray."""

    url: str
    app_name: str
    owns_ray: bool
    _stopped: bool = field(default=False, repr=False)

    def shutdown(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        import ray
        from ray import serve

        serve.shutdown()
        if self.owns_ray:
            ray.shutdown()


def start_local_ray(num_cpus: int | None = None) -> bool:
    """Start Ray on 127.0.0.1 without a dashboard unless it is running; True when started here."""
    import ray

    if ray.is_initialized():
        return False
    ray.init(
        _node_ip_address="127.0.0.1",
        include_dashboard=False,
        num_cpus=num_cpus if num_cpus is not None else max(2, min(os.cpu_count() or 2, 8)),
        logging_level=logging.WARNING,
        log_to_driver=True,
    )
    return True


def _show_progress(args: ServeArgs, done: threading.Event, out: TextIO) -> None:
    started = time.monotonic()
    out.write(f"bigmodel: loading {args.model.served_name} from {args.model.uri} ({args.engine} engine) ...\n")
    out.flush()
    while not done.wait(PROGRESS_EVERY_S):
        out.write(f"bigmodel: still loading {args.model.served_name} ({time.monotonic() - started:.0f} s)\n")
        out.flush()


def run_local(
    args: dict[str, Any] | ServeArgs,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    block: bool = True,
    engine_factory: EngineFactory | None = None,
    num_cpus: int | None = None,
    log_level: str = "WARNING",
    out: TextIO = sys.stderr,
) -> LocalServer:
    """Serve `args` (ServeArgs or its dict) at http://host:port until Ctrl-C, or return a handle.

    With `block=False` the server keeps running in the background and the returned
    `LocalServer` has the URL and `shutdown()`. `log_level` is the replicas' log level (INFO shows
    one access-log line per request). `engine_factory` is for tests and benchmarks.
    """
    from ray import serve

    serve_args = parse_serve_args(args)
    application = build_app(serve_args, engine_factory=engine_factory)  # fails fast on bad args
    owns_ray = start_local_ray(num_cpus)
    serve.start(http_options={"host": host, "port": port, "request_timeout_s": serve_args.limits.request_timeout_s + 5})
    loaded = threading.Event()
    progress = threading.Thread(target=_show_progress, args=(serve_args, loaded, out), daemon=True)
    progress.start()
    try:
        serve.run(application, name=LOCAL_APP_NAME, route_prefix="/", logging_config={"log_level": log_level})
    except BaseException:
        loaded.set()
        progress.join()
        _stop(owns_ray)
        raise
    loaded.set()
    progress.join()
    server = LocalServer(url=f"http://{host}:{port}", app_name=LOCAL_APP_NAME, owns_ray=owns_ray)
    names = ", ".join(serve_args.model_names())
    out.write(f"bigmodel: serving {names} at {server.url}/v1 (Ctrl-C to stop)\n")
    out.flush()
    if not block:
        return server
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        out.write("bigmodel: stopping\n")
    finally:
        server.shutdown()
    return server


def _stop(owns_ray: bool) -> None:
    import ray
    from ray import serve

    serve.shutdown()
    if owns_ray:
        ray.shutdown()
