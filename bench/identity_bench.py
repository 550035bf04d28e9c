"""Identity sign-in throughput: logins/s and p99 through the real HTTP app vs the raw argon2id verify
rate, measured in alternating rounds on the same hasher.

Requests go through :class:`AsgiCaller`, the same whole HTTP path an ASGI server would take them
through, without a client library's CPU on the cores the service is measured on.

This machine's speed drifts by tens of percent within a minute, and bursts (the broker's
housekeeping, neighbours on the host) hit single seconds. So the two rates are measured side by side
many times, in short windows, in alternating order (hash first, then sign-ins first, so that a
steady drift does not favour either), and each round's sign-in window is compared with its own hash
window. The headline overhead is the median over rounds; the ratio of the mean rates and every
round's figure are reported with it.
"""

from __future__ import annotations

import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

from bench.asgi_caller import AsgiCaller
from bench.cleanup import remove_run
from services.identity.adapters.hashing import PasswordHasher
from services.identity.bootstrap import build
from services.identity.settings import IdentitySettings
from shared.crypto import Keyring
from shared.storage.documents import OUTBOX, PENDING

PASSWORD = "Velvet-Harbour-Lantern-42"
TARGET_OVERHEAD = 0.15
OTHER_ACCOUNTS = 5_000


async def rate_over(window_s: float, concurrency: int, one: Callable[[], Awaitable[Any]],
                    latencies: list[float] | None = None) -> float:
    """Completions per second of ``one`` run by ``concurrency`` workers for ``window_s`` seconds.

    Only what completes inside the window counts, over the window's length: the work still in
    flight when it closes (up to ``concurrency`` items queued on two cores) is let finish but not
    counted, so the rate does not depend on how long the queue takes to drain."""
    started = time.perf_counter()
    deadline = started + window_s
    done = 0

    async def worker() -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            begun = time.perf_counter()
            await one()
            finished = time.perf_counter()
            if finished <= deadline:
                done += 1
                if latencies is not None:
                    latencies.append(finished - begun)

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return done / window_s


async def populate(accounts: Any, model_id: str, count: int) -> None:
    """``count`` more accounts like the one signing in: the lookup by email is measured in a store
    that holds more than one customer, as it would be in use. Their outboxes are empty: the model's
    events were its own."""
    model = await accounts.find_one({"_id": model_id})
    for start in range(0, count, 1000):
        await accounts.insert_many([
            {**model, "_id": f"{model_id}-{n}", "email": f"other.{n}.{model['email']}", OUTBOX: [], PENDING: 0}
            for n in range(start, min(count, start + 1000))
        ])


def _percentile(ordered: list[float], share: float) -> float:
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))]


async def measure(kafka_bootstrap: str, mongodb_uri: str, *, rounds: int = 12, seconds: float = 3.0,
                  concurrency: int = 8) -> dict[str, Any]:
    """``rounds`` rounds, each a sign-in window of ``seconds`` and a raw verify window of half that."""
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
        account_id = await create_staff_account(ctx, Person("Bench", "Mark", email, "en"), ["service_desk"], PASSWORD)
        await populate(ctx.stores.accounts.collection, account_id, OTHER_ACCOUNTS)
        hasher: PasswordHasher = ctx.hasher
        stored = hasher.hash_now(PASSWORD)
        http = AsgiCaller(runtime.app)
        login = {"email": email, "password": PASSWORD}

        async def sign_in() -> None:
            status, body = await http.post_json("/v1/sessions", login)
            assert status == 200, body

        async def verify() -> None:
            await hasher.verify(stored, PASSWORD)

        latencies: list[float] = []
        raw_rates: list[float] = []
        login_rates: list[float] = []
        await rate_over(1.0, concurrency, sign_in)  # warm-up: connections, caches, code paths
        for round_ in range(rounds):
            if round_ % 2 == 0:
                raw_rates.append(await rate_over(seconds / 2, concurrency, verify))
                login_rates.append(await rate_over(seconds, concurrency, sign_in, latencies))
            else:
                login_rates.append(await rate_over(seconds, concurrency, sign_in, latencies))
                raw_rates.append(await rate_over(seconds / 2, concurrency, verify))
        latencies.sort()
        per_round = sorted(r / l - 1 for r, l in zip(raw_rates, login_rates, strict=True))
        quartiles = statistics.quantiles(per_round, n=4)
        overhead = statistics.median(per_round)
        return {
            "logins_per_s": round(statistics.fmean(login_rates), 1),
            "login_p50_ms": round(_percentile(latencies, 0.5) * 1000, 1),
            "login_p99_ms": round(_percentile(latencies, 0.99) * 1000, 1),
            "argon2id_verifies_per_s": round(statistics.fmean(raw_rates), 1),
            "overhead_vs_hash": round(overhead, 3),
            "overhead_quartiles": [round(q, 3) for q in quartiles],
            "overhead_of_mean_rates": round(statistics.fmean(raw_rates) / statistics.fmean(login_rates) - 1, 3),
            "overhead_per_round": [round(r / l - 1, 3) for r, l in zip(raw_rates, login_rates, strict=True)],
            "target_overhead": TARGET_OVERHEAD,
            "target_met": overhead <= TARGET_OVERHEAD,
            "rounds": rounds,
            "concurrency": concurrency,
            "accounts": OTHER_ACCOUNTS + 1,
            "argon2": {"memory_kib": settings.argon2_memory_kib, "time_cost": settings.argon2_time_cost,
                       "parallelism": settings.argon2_parallelism},
        }
    finally:
        await runtime.stop()
        await remove_run(kafka_bootstrap, mongodb_uri, topic_namespace=settings.topic_namespace,
                         database=settings.mongodb_database)

