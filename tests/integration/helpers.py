"""Helpers for integration tests: child processes, waiting on conditions, reading topics."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any


from shared.messaging import kafka
from shared.settings import ServiceSettings

ROOT = Path(__file__).resolve().parents[2]


def settings_env(settings: ServiceSettings, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if hasattr(value, "get_secret_value"):
            value = value.get_secret_value()
        env[name.upper()] = str(value).lower() if isinstance(value, bool) else str(value)
    env["PYTHONPATH"] = str(ROOT)
    env.update(extra)
    return env


class Child:
    """A service process started for a test, its output kept for the failure message."""

    def __init__(self, args: list[str], env: dict[str, str], log: Path) -> None:
        self.log = log
        self._out = log.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, *args], env=env, cwd=ROOT, stdout=self._out, stderr=subprocess.STDOUT
        )

    async def wait_ready(self, timeout: float = 60.0) -> None:
        await eventually(lambda: _said(self.log, "probe ready") or self._died(), timeout, f"{self.log} ready")
        if self.proc.poll() is not None:
            raise AssertionError(f"child died: {self.log.read_text()[-3000:]}")

    def _died(self) -> bool:
        return self.proc.poll() is not None

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def terminate(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._out.close()
        return self.proc.returncode


def _said(log: Path, text: str) -> bool:
    return log.exists() and text in log.read_text(errors="replace")


async def eventually(
    check: Callable[[], Any] | Callable[[], Awaitable[Any]], timeout: float, what: str, every: float = 0.1
) -> Any:
    """Poll ``check`` until it returns something truthy; fail with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = check()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(every)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


async def read_topic(bootstrap: str, topic: str, timeout_s: float = 10.0) -> list[Any]:
    """Every record currently in ``topic``, all partitions, oldest first per partition."""
    return await kafka.read_topic(bootstrap, topic, timeout_s=timeout_s)

