"""``make run``: the whole system on this machine, until Ctrl-C.

Starts the local infrastructure (Kafka and FerretDB, run profile) unless ``KAFKA_BOOTSTRAP_SERVERS``
and ``MONGODB_URI`` point at existing ones, creates every catalogue topic, starts the local mail
and SMS sinks and every service under ``services/`` that has a ``__main__``, and prints their
logs prefixed with their names. Ctrl-C (or SIGTERM) stops the services, the sinks, then the
infrastructure it started, and leaves no process behind.
"""

from __future__ import annotations

import os
import secrets
import selectors
import signal
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Fixed local ports, so that the README's URLs are right; override with <SERVICE>_HTTP_PORT.
HTTP_PORTS = {"identity": 8001, "contracts": 8002, "restitution": 8003, "notifications": 8004, "consent": 8005}
SMTP_PORT = int(os.environ.get("SMTP_PORT", "1025"))
TWILIO_SINK_PORT = int(os.environ.get("TWILIO_SINK_PORT", "8025"))


def _kept_secret(name: str, make: Callable[[], str]) -> Path:
    """A file of the run profile's directory holding a secret made once and kept between runs."""
    from deploy.localinfra import Profile

    local = Profile.run().dir  # <repo>/.local/run, or under $LEASELINE_LOCAL_DIR
    path = local / name
    if not path.exists():
        local.mkdir(parents=True, exist_ok=True)
        path.touch(0o600)
        path.write_text(make())
    return path


def secret_keys() -> str:
    """EVENT_SECRET_KEYS for a local run: kept between runs so earlier events can still be opened."""
    if os.environ.get("EVENT_SECRET_KEYS"):
        return os.environ["EVENT_SECRET_KEYS"]
    from shared.crypto import Keyring

    return _kept_secret("event-secret-keys", lambda: Keyring.generate_spec("local-1")).read_text().strip()


def staff_token_file() -> Path:
    """Where the notifications staff API's token for local runs is kept (made on first use)."""
    return _kept_secret("staff-api-token", lambda: secrets.token_urlsafe(32))


def staff_api_token() -> str:
    """STAFF_API_TOKEN for a local run: the caller's, else the kept one (the staff API is closed without)."""
    return os.environ.get("STAFF_API_TOKEN") or staff_token_file().read_text().strip()


#: The services that seal secrets into events (identity: activation and reset tokens, codes) or
#: open them (notifications, to send them). No other process is given the key.
SECRET_HOLDERS = frozenset({"identity", "notifications"})
#: The one service with a staff API behind a token (notifications: who was sent what).
STAFF_TOKEN_HOLDERS = frozenset({"notifications"})


def base_env(environ: Mapping[str, str], bootstrap: str, mongodb_uri: str) -> dict[str, str]:
    """What every child gets (sinks, topic creation, services): the caller's environment without
    its secrets (``EVENT_SECRET_KEYS``, ``STAFF_API_TOKEN``: only their holders get them, from
    ``service_env``), plus where the infrastructure and the sinks are."""
    env = {k: v for k, v in environ.items() if k not in ("EVENT_SECRET_KEYS", "STAFF_API_TOKEN")}
    env.update(
        KAFKA_BOOTSTRAP_SERVERS=bootstrap,
        MONGODB_URI=mongodb_uri,
        PYTHONPATH=str(ROOT),
        SMTP_HOST="127.0.0.1",
        SMTP_PORT=str(SMTP_PORT),
        TWILIO_BASE_URL=f"http://127.0.0.1:{TWILIO_SINK_PORT}",
        PORTAL_BASE_URL=environ.get("PORTAL_BASE_URL", "http://127.0.0.1:8001/portal"),
    )
    return env


def service_env(name: str, base: Mapping[str, str], secret_keys: str, staff_token: str = "") -> dict[str, str]:
    env = {**base, "SERVICE_NAME": name, "HTTP_PORT": http_port(name)}
    # Each service owns its database, and may keep it on a store of its own: <SERVICE>_MONGODB_URI.
    own_store = base.get(f"{name.upper()}_MONGODB_URI")
    if own_store:
        env["MONGODB_URI"] = own_store
    if name in SECRET_HOLDERS:
        env["EVENT_SECRET_KEYS"] = secret_keys
    if name in STAFF_TOKEN_HOLDERS and staff_token:
        env["STAFF_API_TOKEN"] = staff_token
    return env


def services() -> list[str]:
    return sorted(p.parent.name for p in (ROOT / "services").glob("*/__main__.py"))


class Process:
    def __init__(self, name: str, args: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.proc = subprocess.Popen(
            [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C reaches us only; we stop children in order
        )

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


class StopRequested(Exception):
    """Ctrl-C or SIGTERM: stop what was started, whatever stage start-up had reached."""


def _stop_on_signals() -> None:
    def request_stop(signum: int, _frame: object) -> None:
        _ignore_signals()  # the stop itself must not be interrupted half-way
        raise StopRequested(signal.Signals(signum).name)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)


def _ignore_signals() -> None:
    def already_stopping(*_: object) -> None:
        print("already stopping; wait for it to finish", flush=True)

    signal.signal(signal.SIGINT, already_stopping)
    signal.signal(signal.SIGTERM, already_stopping)


def main() -> int:
    sys.path.insert(0, str(ROOT))
    from deploy.localinfra import LocalFerretDB, LocalInfraError, LocalKafka, Profile, ensure_running

    # A signal stops start-up where it is (a download, the wait for Kafka, topic creation) as well
    # as a running system: everything below is inside the try whose finally stops what it started.
    _stop_on_signals()
    owned: list[LocalKafka | LocalFerretDB] = []
    children: list[Process] = []
    exit_code = 0
    try:
        if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("MONGODB_URI"):
            bootstrap, mongodb_uri = os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["MONGODB_URI"]
        else:
            profile = Profile.run()
            kafka, store = LocalKafka(profile), LocalFerretDB(profile)
            print(f"starting local Kafka and FerretDB ({profile.dir})...", flush=True)
            # On failure or interruption ensure_running stops what it started itself.
            owned += ensure_running([kafka, store])  # type: ignore[arg-type]
            bootstrap, mongodb_uri = kafka.bootstrap_servers, store.uri

        env = base_env(os.environ, bootstrap, mongodb_uri)
        keys, staff_token = secret_keys(), staff_api_token()
        subprocess.run([sys.executable, "-m", "shared.messaging.topics"], cwd=ROOT, env=env, check=True)

        children.append(Process("smtp-sink", ["-m", "deploy.sinks", "smtp", "--port", str(SMTP_PORT)], env))
        children.append(Process("sms-sink", ["-m", "deploy.sinks", "twilio", "--port", str(TWILIO_SINK_PORT)], env))
        for name in services():
            children.append(Process(name, ["-m", f"services.{name}"], service_env(name, env, keys, staff_token)))
        print(f"Leaseline is starting: Kafka {bootstrap}, store {mongodb_uri}")
        for name in services():
            print(f"  {name:<14} http://127.0.0.1:{http_port(name)}  (/docs, /healthz, /readyz, /metrics)")
        print(f"  mail sink      smtp://127.0.0.1:{SMTP_PORT}   sms sink http://127.0.0.1:{TWILIO_SINK_PORT}")
        staff = "$STAFF_API_TOKEN" if os.environ.get("STAFF_API_TOKEN") else f"$(cat {staff_token_file()})"
        print(f'  staff API: curl -H "Authorization: Bearer {staff}" '
              f"http://127.0.0.1:{http_port('notifications')}/v1/customers/<id>/deliveries")
        print("  delivered messages: python -m deploy.sinks inbox      stop: Ctrl-C\n", flush=True)
        exit_code = supervise(children)
    except StopRequested:
        exit_code = 0  # what the user asked for
    except (LocalInfraError, subprocess.CalledProcessError, OSError) as error:
        print(f"start-up failed: {error}", file=sys.stderr, flush=True)
        exit_code = 1
    finally:
        _ignore_signals()
        print("stopping...", flush=True)
        for stoppable in [*reversed(children), *reversed(owned)]:
            try:
                stoppable.stop()
            except Exception as error:  # keep stopping the rest
                print(f"could not stop {getattr(stoppable, 'name', stoppable)}: {error}", file=sys.stderr, flush=True)
                exit_code = 1
        print("stopped.", flush=True)
    return exit_code


def http_port(name: str) -> str:
    return os.environ.get(f"{name.upper()}_HTTP_PORT", str(HTTP_PORTS.get(name, 8010)))


def supervise(children: list[Process]) -> int:
    """Print the children's output, prefixed with their names, until one of them dies (1) or a
    signal raises :class:`StopRequested`."""
    selector = selectors.DefaultSelector()
    for child in children:
        assert child.proc.stdout is not None
        os.set_blocking(child.proc.stdout.fileno(), False)
        selector.register(child.proc.stdout, selectors.EVENT_READ, child)
    while True:
        for key, _ in selector.select(timeout=0.5):
            child = key.data
            data = key.fileobj.read()  # type: ignore[union-attr]
            if data:
                for line in data.decode(errors="replace").splitlines():
                    print(f"{child.name:>13} | {line}", flush=True)
            else:
                selector.unregister(key.fileobj)
        dead = [c for c in children if c.proc.poll() is not None]
        if dead:
            print(f"{', '.join(c.name for c in dead)} stopped unexpectedly; stopping everything", flush=True)
            return 1


if __name__ == "__main__":
    sys.exit(main())
