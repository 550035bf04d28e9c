"""``make bench``: every benchmark in one run on the same infrastructure; prints the figures and
their ratios, and writes them as JSON under bench/results/."""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import sys
import traceback
from datetime import UTC, datetime
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"
SUITES = ["backbone", "identity", "notifications"]


def infrastructure() -> tuple[str, str, list[object]]:
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("MONGODB_URI"):
        return os.environ["KAFKA_BOOTSTRAP_SERVERS"], os.environ["MONGODB_URI"], []
    from deploy.localinfra import LocalFerretDB, LocalKafka, Profile

    profile = Profile.test()
    kafka, store = LocalKafka(profile), LocalFerretDB(profile)
    started = [c for c in (kafka, store) if not c.is_running()]
    for component in started:
        component.provision()
        component.start()
    kafka.wait_ready()
    store.wait_ready()
    return kafka.bootstrap_servers, store.uri, started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("suites", nargs="*", default=SUITES, help=f"any of {SUITES}")
    args = parser.parse_args(argv)
    bootstrap, mongodb_uri, started = infrastructure()
    results: dict[str, object] = {
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform()},
    }
    failed = False
    try:
        for suite in args.suites:
            module = importlib.import_module(f"bench.{suite}_bench")
            print(f"== {suite}", flush=True)
            try:
                figures = asyncio.run(module.measure(bootstrap, mongodb_uri))
            except Exception:
                traceback.print_exc()
                failed = True
                continue
            results[suite] = figures
            for name, value in figures.items():
                print(f"  {name:<40} {value:>12.3f}" if isinstance(value, float) else f"  {name:<40} {value!s:>12}")
    finally:
        from bench.cleanup import delete_topics_left  # once the repository is on the path

        try:
            asyncio.run(delete_topics_left())
        except Exception as error:  # cleanup only: the figures are still written
            print(f"could not delete the benchmark topics: {error!r}", file=sys.stderr)
        for component in started:
            component.stop()  # type: ignore[attr-defined]
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written to {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
