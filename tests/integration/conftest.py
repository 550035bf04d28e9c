from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from shared.runtime.service import ServiceRuntime
from shared.settings import ServiceSettings
from tests.integration.helpers import Child, settings_env

pytestmark = pytest.mark.integration


@pytest.fixture
async def runtimes() -> AsyncIterator[list[ServiceRuntime]]:
    """Runtimes started in the test process; stopped at the end of the test."""
    started: list[ServiceRuntime] = []
    yield started
    for runtime in started:
        await runtime.stop()


@pytest.fixture
def children(tmp_path: Path) -> "Callable[..., Child]":
    spawned: list[Child] = []

    def spawn(role: str, settings: ServiceSettings, **env: str) -> Child:
        child = Child(
            ["-m", "tests.integration.probe", role],
            settings_env(settings, **env),
            tmp_path / f"{role}-{len(spawned)}.log",
        )
        spawned.append(child)
        return child

    yield spawn
    for child in spawned:
        child.terminate()
