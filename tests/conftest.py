"""Shared, opt-in fixtures: a moto S3 server behind a fault-injecting proxy, one local Ray.

Nothing here is autouse. ``s3`` starts ``moto_server`` on loopback and, in front of it, a small
HTTP proxy that passes everything through until a test asks it to answer some requests with
``500 InternalError``. ``ray_local`` starts one local Ray for the whole session whose workers
reach that S3 through the proxy, so a job's actors see the same store as the test.
"""

from __future__ import annotations

import contextlib
import http.client
import http.server
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    # botocore's own retries off, so that a fault reaches (and tests) faceveil's retries.
    "AWS_MAX_ATTEMPTS": "1",
}
RAY_TMP = "/tmp/faceveil-ray-tests"  # short: Ray's socket paths must stay under 108 bytes


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto_server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "/moto-api/", timeout=1):
                return
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.1)
    raise RuntimeError("moto_server did not answer in time")


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """``moto_server -H 127.0.0.1 -p PORT`` as a subprocess; yields its endpoint URL."""
    exe = Path(sys.executable).with_name("moto_server")
    port = free_port()
    proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(port)],
                            env=os.environ | AWS_ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Faults:
    """What the proxy breaks: the first ``times`` requests of ``method`` to each distinct path
    that contains ``needle`` get ``500 InternalError``. ``injected`` lists what it broke."""

    method: str = ""
    needle: str = ""
    times: int = 0
    seen: dict[str, int] = field(default_factory=dict)
    injected: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def should_fail(self, method: str, path: str) -> bool:
        if not self.times or method != self.method or self.needle not in path:
            return False
        with self.lock:
            count = self.seen.get(path, 0)
            self.seen[path] = count + 1
            if count < self.times:
                self.injected.append(path)
                return True
        return False


class _ProxyHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    HOP = {"connection", "keep-alive", "transfer-encoding", "proxy-connection", "content-length"}

    def log_message(self, *args) -> None:  # silence the default stderr access log
        return

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            parts = []
            while size := int(self.rfile.readline().split(b";")[0].strip(), 16):
                parts.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(parts)
        return self.rfile.read(int(self.headers.get("Content-Length", 0)))

    def _reply(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        length = str(len(body))
        for name, value in headers:
            if name.lower() == "content-length" and self.command == "HEAD":
                length = value  # a HEAD reply has no body but must announce the object's size
            elif name.lower() not in self.HOP:
                self.send_header(name, value)
        self.send_header("Content-Length", length)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _proxy(self) -> None:
        body = self._body()
        if self.server.faults.should_fail(self.command, self.path):
            error = b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"
            self._reply(500, [("Content-Type", "application/xml")], error)
            return
        upstream = http.client.HTTPConnection("127.0.0.1", self.server.upstream_port, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in self.HOP}
            upstream.request(self.command, self.path, body=body, headers=headers)
            response = upstream.getresponse()
            payload = response.read()
            self._reply(response.status, response.getheaders(), payload)
        finally:
            upstream.close()

    do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _proxy


class FaultyProxy(http.server.ThreadingHTTPServer):
    """A pass-through HTTP proxy to moto on loopback, with injectable ``faults``."""

    daemon_threads = True

    def __init__(self, upstream_port: int) -> None:
        super().__init__(("127.0.0.1", 0), _ProxyHandler)
        self.upstream_port = upstream_port
        self.faults = Faults()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def inject(self, method: str, needle: str, times: int = 1) -> Faults:
        """From now on, fail the first ``times`` ``method`` requests to each path with
        ``needle``; returns the record of what was failed."""
        self.faults = Faults(method, needle, times)
        return self.faults

    def heal(self) -> None:
        self.faults = Faults()


@dataclass
class S3:
    """A moto server behind a FaultyProxy; ``endpoint`` is what clients use (the proxy)."""

    endpoint: str
    direct: str
    proxy: FaultyProxy

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.direct, **_boto_kwargs())

    def bucket(self, name: str) -> str:
        """Create bucket ``name`` (once) and return ``s3://name``."""
        with contextlib.suppress(self.client().exceptions.BucketAlreadyOwnedByYou):
            self.client().create_bucket(Bucket=name)
        return f"s3://{name}"


def _boto_kwargs() -> dict:
    return {"aws_access_key_id": AWS_ENV["AWS_ACCESS_KEY_ID"],
            "aws_secret_access_key": AWS_ENV["AWS_SECRET_ACCESS_KEY"],
            "region_name": AWS_ENV["AWS_DEFAULT_REGION"]}  # fmt: skip


def s3_env(s3: S3) -> dict[str, str]:
    """Environment that points boto3/s3fs (in this process or any child) at ``s3``."""
    return {**AWS_ENV, "AWS_ENDPOINT_URL": s3.endpoint}


@pytest.fixture(scope="session")
def s3() -> Iterator[S3]:
    """moto S3 on loopback behind a fault-injecting proxy; this process's environment points
    boto3 and s3fs at the proxy for the rest of the session."""
    with moto_server() as direct:
        proxy = FaultyProxy(int(direct.rsplit(":", 1)[1]))
        thread = threading.Thread(target=proxy.serve_forever, daemon=True)
        thread.start()
        store = S3(proxy.url, direct, proxy)
        saved = {k: os.environ.get(k) for k in s3_env(store)}
        os.environ.update(s3_env(store))
        try:
            yield store
        finally:
            for key, value in saved.items():
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            proxy.shutdown()
            proxy.server_close()


@pytest.fixture(scope="session")
def ray_local(s3: S3) -> Iterator[str]:
    """One local Ray (2 CPUs) for the session, whose workers use ``s3``; yields its address.

    ``run_job`` joins a Ray that is already running and leaves it up, so tests share this one.
    A Ray someone else started is used as it is (its workers may then not see ``s3``).
    """
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=RAY_TMP,
                 runtime_env={"env_vars": s3_env(s3)}, logging_level="WARNING")  # fmt: skip
    yield ray.get_runtime_context().gcs_address
    if started:
        ray.shutdown()


@pytest.fixture(scope="session")
def secret_file(tmp_path_factory) -> Path:
    """A job secret key file shared by the session's jobs."""
    from faceveil.jobs.keyfile import new_key_file

    return new_key_file(tmp_path_factory.mktemp("secret") / "secret.key")
