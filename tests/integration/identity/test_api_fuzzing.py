"""Fuzz the identity HTTP API from its own OpenAPI document: no input makes it fail (no 5xx).

The service runs as a real process (uvicorn, real broker and store), as in production.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from tests.conftest import Infrastructure
from tests.integration.helpers import settings_env
from tests.integration.identity.conftest import identity_settings

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def identity_api(infra: Infrastructure, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    config = identity_settings(infra, http_port=port, answer_floor_ms=0)
    log = tmp_path_factory.mktemp("identity") / "identity.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.identity"],
            env=settings_env(config),
            cwd=Path(__file__).resolve().parents[3],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None:
                raise AssertionError(log.read_text()[-3000:])
            time.sleep(0.2)
        else:
            raise AssertionError(f"identity never became ready: {log.read_text()[-3000:]}")
        yield base
        proc.terminate()
        proc.wait(30)


def test_no_request_makes_the_identity_api_fail(identity_api: str) -> None:
    """Every operation, a dozen generated requests each (valid and invalid bodies, headers, paths):
    none may end in a server error. (schemathesis' own pytest loader does not run on pytest 9, so
    its strategies are driven directly.)"""
    schema = schemathesis.openapi.from_url(f"{identity_api}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 10, "the OpenAPI document lists the API"
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def no_server_error(case: schemathesis.Case) -> None:
            response = case.call(base_url=identity_api, timeout=30)
            assert response.status_code < 500, (
                f"{case.method} {case.formatted_path} -> {response.status_code}: {response.text[:300]}"
            )

        no_server_error()
