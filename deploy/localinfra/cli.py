"""Command line: ``python3 -m deploy.localinfra {up,down,status,provision,logs} [--profile run|test]``."""

import argparse
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from ._base import LocalInfraError
from .ferretdb import LocalFerretDB
from .kafka import LocalKafka
from .profile import Profile

Component = LocalKafka | LocalFerretDB


def _components(profile: Profile) -> tuple[LocalKafka, LocalFerretDB]:
    return LocalKafka(profile), LocalFerretDB(profile)


def _address(component: Component) -> str:
    return component.bootstrap_servers if isinstance(component, LocalKafka) else component.uri


def _provision(components: tuple[LocalKafka, LocalFerretDB]) -> dict[str, float]:
    """Provision all components in parallel (Maven download and Go build overlap)."""

    def timed(component: Component) -> float:
        started = time.monotonic()
        component.provision()
        return time.monotonic() - started

    with ThreadPoolExecutor(max_workers=len(components)) as pool:
        futures = {c.component: pool.submit(timed, c) for c in components}
        # Surface the first failure, but let the other provisioning finish.
        return {name: future.result() for name, future in futures.items()}


def _cmd_provision(profile: Profile, _args: argparse.Namespace) -> int:
    for name, seconds in _provision(_components(profile)).items():
        print(f"{name:<9} provisioned in {seconds:.1f}s")
    return 0


def _cmd_up(profile: Profile, _args: argparse.Namespace) -> int:
    components = _components(profile)
    provision_times = _provision(components)
    started_here: list[Component] = []
    try:
        for component in components:
            was_running = component.is_running() and not component.is_stale()
            component.start()
            if not was_running:
                started_here.append(component)
        waits = {c.component: c.wait_ready() for c in components}
    except BaseException:
        for component in started_here:
            component.stop(timeout=15)
        raise
    for component in components:
        fresh = "started" if component in started_here else "already running"
        print(
            f"{component.component:<9} ready  {_address(component):<28} "
            f"(pid {component.pid}, {fresh}, provision {provision_times[component.component]:.1f}s, "
            f"ready after {waits[component.component]:.1f}s)"
        )
    kafka, ferretdb = components
    print()
    print(f"export KAFKA_BOOTSTRAP_SERVERS={kafka.bootstrap_servers}")
    print(f"export MONGODB_URI={ferretdb.uri}")
    return 0


def _cmd_down(profile: Profile, _args: argparse.Namespace) -> int:
    # FerretDB first: it is quick, and Kafka's controlled shutdown takes longer.
    for component in reversed(_components(profile)):
        was_running = component.is_running()
        component.stop()
        print(f"{component.component:<9} {'stopped' if was_running else 'was not running'}")
    return 0


def _cmd_status(profile: Profile, _args: argparse.Namespace) -> int:
    all_running = True
    for component in _components(profile):
        pid = component.pid
        all_running &= pid is not None
        state = f"running  (pid {pid})" if pid is not None else "stopped"
        print(f"{component.component:<9} {_address(component):<28} {state}")
    return 0 if all_running else 3


def _cmd_logs(profile: Profile, args: argparse.Namespace) -> int:
    for component in _components(profile):
        print(component.log_tail(component.logs, args.lines))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser of the CLI."""
    parser = argparse.ArgumentParser(
        prog="python3 -m deploy.localinfra",
        description="Local Kafka (KRaft) and FerretDB for Leaseline, without Docker.",
    )
    profile_help = "which set of ports/data to use (default: run)"
    parser.add_argument("--profile", choices=("run", "test"), default="run", help=profile_help)
    # Also accepted after the subcommand (`up --profile test`); SUPPRESS keeps
    # the subparser from overwriting a value given before the subcommand.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--profile", choices=("run", "test"), default=argparse.SUPPRESS, help=profile_help)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("up", parents=[common], help="provision, start and wait until both are ready")
    sub.add_parser("down", parents=[common], help="stop both cleanly (data is kept)")
    sub.add_parser("status", parents=[common], help="show running/stopped and addresses (exit 3 unless both run)")
    sub.add_parser("provision", parents=[common], help="download Kafka jars, build FerretDB, format storage")
    logs = sub.add_parser("logs", parents=[common], help="print the tail of each log")
    logs.add_argument("-n", "--lines", type=int, default=40, help="lines per log file (default: 40)")
    return parser


_COMMANDS = {"up": _cmd_up, "down": _cmd_down, "status": _cmd_status, "provision": _cmd_provision, "logs": _cmd_logs}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the process exit code."""
    args = build_parser().parse_args(argv)
    try:
        profile = Profile.named(args.profile)
        return _COMMANDS[args.command](profile, args)
    except LocalInfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
