"""Shared fixtures of the key-library tests: a real moto server on loopback, cheap custodians.

``moto_server()`` comes from the top-level conftest.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from faceveil.manifests.custodian import CustodianPrivate, ScryptParams
from tests.conftest import moto_server

FAST_KDF = ScryptParams(n=2**15, r=8, p=1)  # the floor: about 30 ms
DUMMY_AWS_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_SESSION_TOKEN": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}


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
    """Cheap scrypt parameters for tests (the floor n = 2**15; production default is n = 2**17)."""
    return FAST_KDF


@pytest.fixture(scope="session")
def custodians() -> list[CustodianPrivate]:
    """Three custodians (alice, bob, carol) with keys in memory."""
    return [CustodianPrivate.generate(name) for name in ("alice", "bob", "carol")]


@pytest.fixture(scope="session")
def newcomer() -> CustodianPrivate:
    """A fourth custodian (dave), for reshares to a new custodian set."""
    return CustodianPrivate.generate("dave")
