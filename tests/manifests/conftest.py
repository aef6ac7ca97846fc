"""Shared fixtures of the key-library tests: a real moto server on loopback, cheap custodians.

``moto_server()`` is a plain context manager so that other test packages can import it (or
move it to a top-level conftest) and wrap it in their own fixtures.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from manifests.custodian import CustodianPrivate, ScryptParams

FAST_KDF = ScryptParams(n=2**10, r=8, p=1)
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_until_up(url: str, proc: subprocess.Popen, timeout: float) -> None:
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
def moto_server(timeout: float = 30.0) -> Iterator[str]:
    """Run ``moto_server -H 127.0.0.1 -p PORT`` as a subprocess; yield its endpoint URL."""
    exe = Path(sys.executable).with_name("moto_server")
    port = free_port()
    env = os.environ | DUMMY_AWS_ENV
    proc = subprocess.Popen(
        [str(exe), "-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(url, proc, timeout)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """Endpoint URL of a moto server shared by the session."""
    with moto_server() as url:
        yield url


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """Dummy AWS credentials so that boto3 never looks for real ones."""
    for name, value in DUMMY_AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def fast_kdf() -> ScryptParams:
    """Cheap scrypt parameters for tests (production default is n = 2**17)."""
    return FAST_KDF


@pytest.fixture(scope="session")
def custodians() -> list[CustodianPrivate]:
    """Three custodians (alice, bob, carol) with keys in memory."""
    return [CustodianPrivate.generate(name) for name in ("alice", "bob", "carol")]
