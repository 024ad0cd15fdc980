"""A real S3-compatible server on 127.0.0.1 for the tests: build it once, start it per session.

The server is tests/cluster/s3server/main.go: gofakes3 (Go module proxy) serving a directory over the
S3 HTTP protocol, behind our own AWS Signature Version 4 check for one key pair, so the clients
(boto3 in the trainer, the serving engine and the feedback sink) run their real signing, retries,
multipart uploads and paging against it. The binary is cached under
``$BIGMODEL_CACHE_DIR/k8s/s3server-<hash of the wrapper's go.mod, go.sum and main.go>/bin/s3server``
(the control plane's cache; a changed wrapper is a new directory).

    python tests/cluster/s3server.py build           # build (or reuse) the binary, print its path
    python tests/cluster/s3server.py run BUCKET...   # serve until Ctrl-C, printing the endpoint
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
WRAPPER = HERE / "s3server"
sys.path.insert(0, str(HERE))
try:
    import clusterbuild
finally:
    sys.path.remove(str(HERE))

REGION = "us-east-1"
START_TIMEOUT_S = 60.0


def _wrapper_hash() -> str:
    digest = hashlib.sha256()
    for name in ("go.mod", "go.sum", "main.go"):
        digest.update(name.encode() + b"\0" + (WRAPPER / name).read_bytes())
    return digest.hexdigest()[:12]


def binary_path() -> Path:
    return clusterbuild.cache_root() / f"s3server-{_wrapper_hash()}" / "bin" / "s3server"


def build() -> Path:
    """Build the server unless the cache has it; return the binary. Idempotent, safe in parallel."""
    binary = binary_path()
    if (binary.parent.parent / ".complete").exists() and binary.exists():
        return binary
    if shutil.which("go") is None:
        raise RuntimeError("Go is needed to build the tests' S3 server (https://go.dev/dl/)")
    with clusterbuild._locked(clusterbuild.cache_root()):
        clusterbuild._step(
            "S3 server (gofakes3)",
            binary.parent.parent,
            [binary],
            lambda: clusterbuild._run(
                ["go", "build", "-trimpath", "-ldflags", "-s -w", "-o", str(binary), "."],
                WRAPPER,
                clusterbuild._go_env(),
            ),
        )
    return binary


@dataclass
class S3Server:
    """A running server: what a client needs, and the process behind it."""

    endpoint: str
    access_key: str
    secret_key: str
    region: str
    buckets: list[str]
    data_dir: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def env(self) -> dict[str, str]:
        """The variables boto3 reads (what a storage Secret holds in a pod)."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": self.region,
        }

    def client(self, secret_key: str | None = None):  # type: ignore[no-untyped-def]
        """A boto3 S3 client for this server (another secret key to test refusals)."""
        import boto3

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=secret_key or self.secret_key,
            region_name=self.region,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


@contextlib.contextmanager
def start_s3(buckets: list[str], data_dir: Path | None = None, listen: str = "127.0.0.1:0") -> Iterator[S3Server]:
    """Start the server on `listen` (default 127.0.0.1, a free port) with fresh credentials and these buckets;
    stop it after. The e2e listens on the node's address, which the pods reach."""
    binary = build()
    owned = data_dir is None
    root = Path(tempfile.mkdtemp(prefix="bigmodel-s3-")) if data_dir is None else data_dir
    addr_file = root / "addr"
    addr_file.unlink(missing_ok=True)
    access_key = "bigmodel-" + secrets.token_hex(6)
    secret_key = secrets.token_urlsafe(24)
    log = open(root / "s3server.log", "ab")  # noqa: SIM115 (closed in finally)
    cmd = [str(binary), "-dir", str(root / "data"), "-addr-file", str(addr_file), "-access-key", access_key]
    cmd += ["-buckets", ",".join(buckets), "-listen", listen]
    process = subprocess.Popen(
        cmd, env={**os.environ, "S3SERVER_SECRET_KEY": secret_key}, stdout=log, stderr=subprocess.STDOUT
    )
    server = None
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not addr_file.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"S3 server did not start: {(root / 's3server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        endpoint = "http://" + addr_file.read_text().strip()
        server = S3Server(endpoint, access_key, secret_key, REGION, list(buckets), root / "data", process)
        yield server
    finally:
        if server is not None:
            server.stop()
        elif process.poll() is None:
            process.kill()
            process.wait()
        log.close()
        if owned:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str]) -> int:
    if argv[:1] == ["build"]:
        print(build())
        return 0
    if argv[:1] == ["run"]:
        with start_s3(argv[1:] or ["bigmodel"]) as server:
            for key, value in server.env().items():
                print(f"export {key}={value}")
            print(f"# buckets: {', '.join(server.buckets)}; Ctrl-C stops", flush=True)
            with contextlib.suppress(KeyboardInterrupt):
                server.process.wait()
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
