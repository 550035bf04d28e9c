"""Identity sign-in throughput: logins/s and p99 through the real HTTP app vs the raw argon2id verify rate,
measured in alternating rounds on the same hasher. Requests go through :class:`AsgiCaller`, the same
whole HTTP path an ASGI server would take them through, without a client library's CPU on the cores
the service is measured on."""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from typing import Any

from bench.asgi_caller import AsgiCaller
from bench.cleanup import remove_run
from services.identity.adapters.hashing import PasswordHasher
from services.identity.bootstrap import build
from services.identity.settings import IdentitySettings
from shared.crypto import Keyring

PASSWORD = "Velvet-Harbour-Lantern-42"


async def _raw_verify_rate(hasher: PasswordHasher, seconds: float, concurrency: int) -> float:
    stored = hasher.hash_now(PASSWORD)
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            await hasher.verify(stored, PASSWORD)
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / (time.perf_counter() - started)


async def measure(kafka_bootstrap: str, mongodb_uri: str, *, rounds: int = 4, seconds: float = 5.0,
                  concurrency: int = 8) -> dict[str, Any]:
    """``rounds`` rounds, each the raw verify rate for ``seconds`` / 2 then sign-ins for ``seconds``:
    this machine's speed drifts by tens of percent over a minute, so the two are measured side by
    side, round after round, and compared over all rounds."""
    unique = uuid.uuid4().hex[:8]
    settings = IdentitySettings(
        kafka_bootstrap_servers=kafka_bootstrap, mongodb_uri=mongodb_uri, mongodb_database=f"bench_identity_{unique}",
        topic_namespace=f"bench{unique}.", topic_partitions=1, event_secret_keys=Keyring.generate_spec("bench"),
        rate_address_checks_per_5min=10**9, rate_account_checks_per_15min=10**9, rate_address_sends_per_hour=10**9,
        rate_account_sends_per_hour=10**9, http_port=0,
    )
    runtime = build(settings)
    await runtime.start()
    try:
        ctx = runtime.identity
        from services.identity.service_layer.administration import Person, create_staff_account

        email = f"bench.{unique}@example.fr"
        await create_staff_account(ctx, Person("Bench", "Mark", email, "en"), ["service_desk"], PASSWORD)
        latencies: list[float] = []
        raw_rates: list[float] = []
        login_rates: list[float] = []
        http = AsgiCaller(runtime.app)
        login = {"email": email, "password": PASSWORD}
        await http.post_json("/v1/sessions", login)  # warm-up
        for _ in range(rounds):
            raw_rates.append(await _raw_verify_rate(ctx.hasher, seconds / 2, concurrency))
            deadline = time.perf_counter() + seconds
            done = 0

            async def worker() -> None:
                nonlocal done
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    status, body = await http.post_json("/v1/sessions", login)
                    assert status == 200, body
                    latencies.append(time.perf_counter() - started)
                    done += 1

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(concurrency)))
            login_rates.append(done / (time.perf_counter() - started))
        latencies.sort()
        raw = statistics.fmean(raw_rates)
        logins = statistics.fmean(login_rates)
        return {
            "logins_per_s": round(logins, 1),
            "login_p50_ms": round(latencies[len(latencies) // 2] * 1000, 1),
            "login_p99_ms": round(latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000, 1),
            "argon2id_verifies_per_s": round(raw, 1),
            "overhead_vs_hash": round(raw / logins - 1, 3) if logins else None,
            "overhead_per_round": [round(r / l - 1, 3) for r, l in zip(raw_rates, login_rates, strict=True)],
            "target_overhead": 0.15,
            "concurrency": concurrency,
            "argon2": {"memory_kib": settings.argon2_memory_kib, "time_cost": settings.argon2_time_cost,
                       "parallelism": settings.argon2_parallelism},
        }
    finally:
        await runtime.stop()
        await remove_run(kafka_bootstrap, mongodb_uri, topic_namespace=settings.topic_namespace,
                         database=settings.mongodb_database)


if __name__ == "__main__":
    import json
    import os

    print(json.dumps(asyncio.run(measure(os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:19092"),
                                         os.environ.get("MONGODB_URI", "mongodb://127.0.0.1:27027/"))), indent=2))
