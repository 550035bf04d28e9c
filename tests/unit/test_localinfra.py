"""deploy.localinfra without starting anything: profiles and what ensure_running stops on failure."""

from pathlib import Path

import pytest

from deploy.localinfra import LocalInfraError, Profile, ensure_running


class FakeComponent:
    def __init__(self, name: str, log: list[str], *, running: bool = False, fails: str = "") -> None:
        self.component = name
        self._log = log
        self._running = running
        self._fails = fails

    def provision(self) -> None:
        pass

    def is_running(self) -> bool:
        return self._running

    def is_stale(self) -> bool:
        return False

    def start(self) -> int:
        self._log.append(f"start {self.component}")
        if self._fails == "start":
            raise KeyboardInterrupt  # Ctrl-C while it was being started
        self._running = True
        return 1

    def wait_ready(self) -> float:
        if self._fails == "ready":
            raise LocalInfraError(f"{self.component} not ready after 60s")
        return 0.0

    def stop(self, timeout: float = 30) -> None:
        self._log.append(f"stop {self.component}")
        self._running = False


def test_a_component_that_never_gets_ready_has_what_was_started_stopped_but_not_what_was_running() -> None:
    log: list[str] = []
    theirs = FakeComponent("kafka", log, running=True)
    ours = FakeComponent("ferretdb", log, fails="ready")
    with pytest.raises(LocalInfraError, match="not ready"):
        ensure_running([theirs, ours])  # type: ignore[list-item]
    assert log == ["start ferretdb", "stop ferretdb"]


def test_ctrl_c_while_starting_stops_what_was_started_before_and_the_one_being_started() -> None:
    log: list[str] = []
    kafka, ferretdb = FakeComponent("kafka", log), FakeComponent("ferretdb", log, fails="start")
    with pytest.raises(KeyboardInterrupt):
        ensure_running([kafka, ferretdb])  # type: ignore[list-item]
    assert log == ["start kafka", "start ferretdb", "stop ferretdb", "stop kafka"]


def test_what_started_fine_is_returned_for_the_caller_to_stop() -> None:
    log: list[str] = []
    kafka, ferretdb = FakeComponent("kafka", log), FakeComponent("ferretdb", log, running=True)
    assert ensure_running([kafka, ferretdb]) == [kafka]  # type: ignore[list-item]
    assert log == ["start kafka"]


def test_the_download_cache_can_live_outside_a_throw_away_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEASELINE_LOCAL_DIR", str(tmp_path / "scratch"))
    monkeypatch.setenv("LEASELINE_CACHE_DIR", str(tmp_path / "kept"))
    profile = Profile.run()
    assert profile.dir == tmp_path / "scratch" / "run"
    assert profile.cache_dir == tmp_path / "kept"
    monkeypatch.delenv("LEASELINE_CACHE_DIR")
    assert Profile.run().cache_dir == tmp_path / "scratch" / "cache"
