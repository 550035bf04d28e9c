"""Shared machinery: errors, tool lookup, cache locking, port checks and detached processes."""

import contextlib
import errno
import fcntl
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

from .profile import Profile

_POLL_INTERVAL = 0.1


class LocalInfraError(RuntimeError):
    """Raised when local infrastructure cannot be provisioned, started or stopped."""


def require_tool(name: str, hint: str) -> str:
    """Return the absolute path of executable ``name`` or raise with an installation ``hint``."""
    path = shutil.which(name)
    if path is None:
        raise LocalInfraError(f"{name} not found on PATH: {hint}")
    return path


def run_tool(args: Sequence[str], *, what: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a provisioning command, returning its combined output; raise with that output on failure."""
    proc = subprocess.run(
        list(args),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.strip().splitlines()[-40:])
        raise LocalInfraError(f"{what} failed (exit {proc.returncode}): {' '.join(args)}\n{tail}")
    return proc.stdout


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (serialises concurrent provisioning)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def tail_file(path: Path, lines: int = 40) -> str:
    """Return the last ``lines`` lines of ``path`` (empty string if it does not exist)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 64 * 1024))
            data = fh.read()
    except FileNotFoundError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def tcp_connectable(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return True if a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def port_is_free(host: str, port: int) -> bool:
    """Return True if nothing listens on ``host:port`` (tries to bind it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # SO_REUSEADDR so that sockets of a just-stopped server in TIME_WAIT do
        # not count as "in use"; a live listener still makes bind fail on Linux.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as exc:
            if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                return False
            raise
    return True


def listening_pids(port: int) -> set[int]:
    """Best effort (Linux /proc): pids of processes with a listening TCP socket on ``port``."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            cols = row.split()
            if len(cols) > 9 and cols[3] == "0A" and int(cols[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(cols[9])
    pids: set[int] = set()
    if not inodes:
        return pids
    targets = {f"socket:[{inode}]" for inode in inodes}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) in targets:
                    pids.add(int(entry.name))
                    break
        except OSError:
            continue
    return pids


def describe_pid(pid: int) -> str:
    """Return ``"pid N: <command line>"`` for error messages."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:
        cmd = ""
    cmd = " ".join(cmd.split())
    return f"pid {pid}: {cmd[:160]}" if cmd else f"pid {pid}"


def pid_alive(pid: int) -> bool:
    """Return True if ``pid`` exists and any of its threads is still running (not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A multi-threaded process (the JVM) can show a zombie main thread while its
    # other threads are still exiting and holding its sockets and files open.
    try:
        tasks = list(Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return True
    for task in tasks:
        try:
            stat = (task / "stat").read_text()
        except OSError:
            continue
        if stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X"):
            return True
    return False


def _cmdline(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return None


def rotate_log(path: Path) -> None:
    """Move ``path`` to ``path.prev`` so a fresh run starts with an empty log."""
    if path.exists():
        os.replace(path, path.with_name(path.name + ".prev"))


class ManagedProcess:
    """A server process started detached (own session) and tracked with a pid file.

    Subclasses provide the command line, the port(s) and the readiness checks.
    """

    #: Human-readable component name, used in messages and file names.
    component = "process"

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self._proc: subprocess.Popen[bytes] | None = None

    # -- to be provided by subclasses ---------------------------------------

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _ports(self) -> list[int]:
        raise NotImplementedError

    def _pid_marker(self) -> str:
        """Return a string found in our process's command line (guards against pid reuse)."""
        raise NotImplementedError

    def _prepare_start(self) -> None:
        """Prepare files before spawning (write configs, rotate logs)."""

    def _is_ready(self) -> bool:
        """True once the process serves clients (checked while it is alive)."""
        raise NotImplementedError

    #: Where clients reach it, for messages.
    address = ""
    #: How long ``wait_ready`` waits by default, and how often it looks.
    ready_timeout_s = 60.0
    ready_poll_s = 0.1

    def wait_ready(self, timeout: float | None = None) -> float:
        """Block until the process serves clients; return the seconds waited.

        Raises :class:`LocalInfraError` with the log tail if the process is not running, dies,
        or is not ready by the deadline."""
        timeout = self.ready_timeout_s if timeout is None else timeout
        started = time.monotonic()
        deadline = started + timeout
        pid = self.pid
        if pid is None:
            raise LocalInfraError(f"{self.component} is not running.\n{self.log_tail(self.logs)}")
        while True:
            self._ensure_alive(pid, self.logs)
            if self._is_ready():
                return time.monotonic() - started
            if time.monotonic() >= deadline:
                raise LocalInfraError(
                    f"{self.component} (pid {pid}) not ready on {self.address} after {timeout:.0f}s.\n"
                    f"{self.log_tail(self.logs)}"
                )
            time.sleep(self.ready_poll_s)

    @property
    def stdout_log(self) -> Path:
        """File receiving the process's stdout and stderr."""
        raise NotImplementedError

    # -- pid file -----------------------------------------------------------

    @property
    def pid_file(self) -> Path:
        """Pid file of the running process: ``<root>/<profile>/<component>.pid``."""
        return self.profile.dir / f"{self.component}.pid"

    def _read_pid(self) -> int | None:
        try:
            return int(self.pid_file.read_text().strip())
        except (FileNotFoundError, ValueError):
            return None

    def _reap(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._proc = None

    def _is_ours(self, pid: int) -> bool:
        if not pid_alive(pid):
            return False
        if self._proc is not None and self._proc.pid == pid:
            # Spawned by this very object and not reaped: ours, whatever its command line says.
            # Read right after the start, it once came back without the marker, and a broker that
            # was starting was taken for one that had died (the test failed; the broker ran on).
            return True
        cmd = _cmdline(pid)
        # No /proc (macOS): trust the pid file.
        return cmd is None or self._pid_marker() in cmd

    @property
    def pid(self) -> int | None:
        """Pid of the running process, or None if it is not running."""
        self._reap()
        pid = self._read_pid()
        return pid if pid is not None and self._is_ours(pid) else None

    def is_running(self) -> bool:
        """Return True if this profile's process is alive."""
        return self.pid is not None

    # -- lifecycle ----------------------------------------------------------

    def _check_ports(self, grace: float = 5.0) -> None:
        deadline = time.monotonic() + grace
        for port in self._ports():
            while not port_is_free("127.0.0.1", port):
                owners = listening_pids(port)
                # No owner visible: most likely a socket of a just-killed
                # process still being torn down; give it a moment.
                if not owners and time.monotonic() < deadline:
                    time.sleep(_POLL_INTERVAL)
                    continue
                who = ", ".join(describe_pid(p) for p in sorted(owners)) if owners else "unknown process"
                raise LocalInfraError(
                    f"port {port} already in use by another process ({who}); "
                    f"stop it or choose other ports for profile {self.profile.name!r} "
                    f"(see deploy/localinfra/README.md for the port variables)"
                )

    def start(self) -> int:
        """Start the process detached (idempotent: returns the existing pid if already running)."""
        # Serialise concurrent start() calls for the same profile (e.g. parallel
        # test workers) so only one of them spawns a server.
        with file_lock(self.profile.dir / f".{self.component}.start.lock"):
            return self._start_locked()

    def is_stale(self) -> bool:
        """True when the running process is not the current build (rebuilt since it started)."""
        return False

    def _start_locked(self) -> int:
        existing = self.pid
        if existing is not None:
            if not self.is_stale():
                return existing
            self.stop()  # built anew since it started: run the current build
        self.pid_file.unlink(missing_ok=True)
        self._check_ports()
        self._prepare_start()
        command = self._command()
        self.stdout_log.parent.mkdir(parents=True, exist_ok=True)
        rotate_log(self.stdout_log)
        with open(self.stdout_log, "ab") as out:
            try:
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    cwd=self.profile.dir,
                    # Own session/process group: survives the launching shell and
                    # lets stop() signal the whole group.
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise LocalInfraError(f"cannot start {self.component}: {exc} (command: {command[0]})") from exc
        tmp = self.pid_file.with_suffix(".pid.tmp")
        tmp.write_text(f"{self._proc.pid}\n")
        os.replace(tmp, self.pid_file)
        return self._proc.pid

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            self._reap()
            if not pid_alive(pid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_INTERVAL)

    def _signal_group(self, pid: int, sig: signal.Signals) -> None:
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            # Not a group leader we own (e.g. pid reused); signal the pid only.
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def stop(self, timeout: float = 30) -> None:
        """Stop gracefully: SIGTERM to the process group, SIGKILL after ``timeout`` seconds."""
        pid = self.pid
        if pid is None and self._proc is not None and self._proc.poll() is None:
            pid = self._proc.pid  # started, but interrupted before its pid file was written
        if pid is not None:
            self._signal_group(pid, signal.SIGTERM)
            if not self._wait_gone(pid, timeout):
                self._signal_group(pid, signal.SIGKILL)
                if not self._wait_gone(pid, 10):
                    raise LocalInfraError(f"{self.component} (pid {pid}) did not exit after SIGKILL")
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def kill(self) -> None:
        """Kill immediately with SIGKILL (simulates a crash; data is left as is)."""
        pid = self.pid
        if pid is not None:
            self._signal_group(pid, signal.SIGKILL)
            if not self._wait_gone(pid, 10):
                raise LocalInfraError(f"{self.component} (pid {pid}) did not exit after SIGKILL")
        self._proc = None
        self.pid_file.unlink(missing_ok=True)

    def _ensure_alive(self, pid: int, logs: Sequence[Path]) -> None:
        self._reap()
        if not pid_alive(pid):
            self.pid_file.unlink(missing_ok=True)
            raise LocalInfraError(f"{self.component} exited during start-up.\n{self.log_tail(logs)}")

    def log_tail(self, logs: Sequence[Path], lines: int = 30) -> str:
        """Return the tails of ``logs`` formatted for an error message."""
        parts = []
        for log in logs:
            text = tail_file(log, lines)
            if text:
                parts.append(f"--- {log} (last {lines} lines) ---\n{text}")
        return "\n".join(parts) if parts else "(no log output)"


def ensure_running(components: Sequence[ManagedProcess]) -> list[ManagedProcess]:
    """Provision (cached), start what is not running or runs an outdated build, and wait until all
    are ready. Returns the components started here: the caller stops those, and leaves running
    what someone else started.

    When anything fails or is interrupted (Ctrl-C) on the way, what was started here is stopped
    before the error goes on: the caller, which never got the list, could not do it."""
    started: list[ManagedProcess] = []
    try:
        for component in components:
            component.provision()
            if not component.is_running() or component.is_stale():
                started.append(component)  # before start(): an interrupted start is stopped too
                component.start()
        for component in components:
            component.wait_ready()
    except BaseException:
        for component in reversed(started):
            try:
                component.stop(timeout=15)
            except Exception as error:  # keep stopping the others; the first error is the one to see
                print(f"could not stop {component.component}: {error}")
        raise
    return started
