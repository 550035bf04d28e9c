"""Known and unknown emails are indistinguishable: same status, same body, same timing distribution.

Timing is compared with a two-sided Mann-Whitney U test on 60 interleaved samples per group. The
same statistic is shown to detect a 5 ms shift at this noise level, so a pass means something.
(Measured here: medians within 0.6 ms of each other, and a 1 to 2 ms shift already detected.)
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import date

import httpx
import pytest

from shared.events import ContractOpened
from tests.conftest import Infrastructure
from tests.integration.helpers import eventually
from tests.integration.identity.conftest import (
    Harness,
    person,
    register_and_activate,
    start_harness,
    stop_harness,
)

pytestmark = pytest.mark.integration

SAMPLES = 60
ALPHA = 0.001  # with identical distributions, a false alarm once in a thousand runs


def mann_whitney_p(a: list[float], b: list[float]) -> float:
    """Two-sided p-value of the Mann-Whitney U test (normal approximation with tie correction)."""
    pooled = sorted((v, i) for i, v in enumerate(a + b))
    ranks = [0.0] * len(pooled)
    ties = 0.0
    i = 0
    while i < len(pooled):
        j = i
        while j + 1 < len(pooled) and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        for k in range(i, j + 1):
            ranks[pooled[k][1]] = (i + j) / 2 + 1
        t = j - i + 1
        ties += t**3 - t
        i = j + 1
    n1, n2 = len(a), len(b)
    u = sum(ranks[:n1]) - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    n = n1 + n2
    sd = math.sqrt(n1 * n2 / 12 * ((n + 1) - ties / (n * (n - 1))))
    z = (abs(u - mean) - 0.5) / sd
    return math.erfc(z / math.sqrt(2))


def test_the_statistic_sees_a_shift_and_not_noise() -> None:
    base = [30 + (i * 7919 % 13) / 3 for i in range(SAMPLES)]
    assert mann_whitney_p(base, [v + 10 for v in base]) < 1e-6
    assert mann_whitney_p(base, list(reversed(base))) > 0.5


#: Failures before a lock, in the timing harness: above every sample of a test, so that the known
#: account's samples measure what an attacker's first guesses meet (an account counting failures,
#: not a locked one, whose refusal takes another path).
LOCK_AFTER = 1_000


@pytest.fixture(scope="module")
async def quiet(infra: Infrastructure) -> AsyncIterator[Harness]:
    harness = await start_harness(
        infra, rate_address_checks_per_5min=100_000, rate_account_checks_per_15min=100_000,
        rate_address_sends_per_hour=100_000, rate_account_sends_per_hour=100_000, lockout_threshold=LOCK_AFTER,
    )
    yield harness
    await stop_harness(harness)


async def compare(known: Callable[[], Awaitable[httpx.Response]],
                  unknown: Callable[[], Awaitable[httpx.Response]]) -> tuple[list[float], list[float]]:
    """Interleaved samples (so that drift hits both groups alike); answers must be identical."""
    for _ in range(3):  # warm-up
        await known()
        await unknown()
    times: dict[str, list[float]] = {"known": [], "unknown": []}
    answers: dict[str, set[tuple[int, str]]] = {"known": set(), "unknown": set()}
    for n in range(SAMPLES):
        order = [("known", known), ("unknown", unknown)]
        for name, call in order if n % 2 else reversed(order):
            started = time.perf_counter()
            answer = await call()
            times[name].append((time.perf_counter() - started) * 1000)
            answers[name].add((answer.status_code, answer.text))
    assert answers["known"] == answers["unknown"] and len(answers["known"]) == 1, answers
    return times["known"], times["unknown"]


def assert_indistinguishable(known: list[float], unknown: list[float]) -> None:
    p = mann_whitney_p(known, unknown)
    median = sorted(known)[len(known) // 2], sorted(unknown)[len(unknown) // 2]
    assert p > ALPHA, f"timing differs (p={p:.2g}, medians {median[0]:.1f} vs {median[1]:.1f} ms)"
    assert mann_whitney_p(known, [v + 5 for v in unknown]) < ALPHA, "the test would have seen a 5 ms difference"


async def test_login_with_a_wrong_password_is_indistinguishable_from_an_unknown_email(quiet: Harness) -> None:
    who = await register_and_activate(quiet, "Gilles Blanchard")
    http = quiet.http()
    known, unknown = await compare(
        lambda: http.post("/v1/sessions", json={"email": who["email"], "password": "Wrong-Guess-Number-1"}),
        lambda: http.post("/v1/sessions", json={"email": f"x{uuid.uuid4().hex[:8]}@example.fr",
                                                "password": "Wrong-Guess-Number-1"}),
    )
    account = await quiet.account(who["email"])
    assert account["lock"] is None and account["failed_logins"] == SAMPLES + 3, \
        "every known sample met an unlocked account that counted its failure"
    assert_indistinguishable(known, unknown)


async def test_registering_a_taken_email_is_indistinguishable_from_a_new_one(quiet: Harness) -> None:
    who = await register_and_activate(quiet, "Helene Marchand")
    http = quiet.http()
    known, unknown = await compare(
        lambda: http.post("/v1/registrations", json=person("Helene Marchand") | {"email": who["email"]}),
        lambda: http.post("/v1/registrations", json=person("Helene Marchand")),
    )
    assert_indistinguishable(known, unknown)


async def test_asking_a_reset_for_a_known_email_is_indistinguishable_from_an_unknown_one(quiet: Harness) -> None:
    who = await register_and_activate(quiet, "Ivan Lemoine")
    http = quiet.http()
    known, unknown = await compare(
        lambda: http.post("/v1/password-resets", json={"email": who["email"]}),
        lambda: http.post("/v1/password-resets", json={"email": f"x{uuid.uuid4().hex[:8]}@example.fr"}),
    )
    assert_indistinguishable(known, unknown)


async def test_asking_a_new_activation_link_for_a_pending_account_is_indistinguishable_from_an_unknown_email(
    quiet: Harness,
) -> None:
    pending = person("Joelle Perrin")
    http = quiet.http()
    assert (await http.post("/v1/registrations", json=pending)).status_code == 202
    known, unknown = await compare(
        lambda: http.post("/v1/activations/resend", json={"email": pending["email"]}),
        lambda: http.post("/v1/activations/resend", json={"email": f"x{uuid.uuid4().hex[:8]}@example.fr"}),
    )
    assert_indistinguishable(known, unknown)


async def test_asking_a_registration_code_for_a_known_customer_number_is_indistinguishable_from_an_unknown_one(
    quiet: Harness,
) -> None:
    """A number gets at most 3 codes per attempt (then 429 at once): every sample asks for a fresh one."""
    known_numbers = [f"BE-{uuid.uuid4().hex[:8]}" for _ in range(SAMPLES + 3)]
    await asyncio.gather(*(quiet.publish(ContractOpened(
        contract_number=f"{number}-L1", customer_number=number, holder_first_name="Lotte", holder_last_name="Peeters",
        product="lease", market="BE", currency="EUR", start_date=date(2025, 3, 1), end_date=date(2029, 2, 28),
        vin="WBA8E9G50GNT12345", vehicle_model="BMW 320d", mobile_on_file="+32470123499",
    )) for number in known_numbers))
    customers = quiet.runtime.db["customer_numbers"]
    await eventually(lambda: _all_there(customers, known_numbers), 30, "every contract.opened consumed")
    http = quiet.http()
    fresh_known = iter(known_numbers)
    known, unknown = await compare(
        lambda: http.post("/v1/registrations/customer-number-codes",
                          json={"customer_number": next(fresh_known), "locale": "nl-BE"}),
        lambda: http.post("/v1/registrations/customer-number-codes",
                          json={"customer_number": f"BE-{uuid.uuid4().hex[:8]}", "locale": "nl-BE"}),
    )
    assert await customers.count_documents({"_id": {"$in": known_numbers}, "registration_code": {"$ne": None}}) \
        == len(known_numbers), "every known sample texted a code"
    assert_indistinguishable(known, unknown)


async def _all_there(customers, numbers: list[str]) -> bool:
    return await customers.count_documents({"_id": {"$in": numbers}}) == len(numbers)
