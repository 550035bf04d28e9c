from datetime import UTC, date, datetime, timedelta

import pytest

from services.identity.domain import codes, tokens
from services.identity.domain.access import KnownContract, access_ends_on, add_months, after_closing
from services.identity.domain.lockout import LockoutPolicy, LockState, after_failure
from services.identity.domain.normalise import InvalidPhone, normalise_email, normalise_mobile, normalise_vin
from services.identity.domain.passwords import PasswordPolicy

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)


def test_an_email_is_one_username_however_it_is_typed() -> None:
    assert normalise_email("  Jeanne.Martin@Example.FR ") == "jeanne.martin@example.fr"


def test_a_french_mobile_typed_nationally_becomes_e164_and_a_landline_is_refused() -> None:
    assert normalise_mobile("06 12 34 56 78", "fr-FR") == "+33612345678"
    with pytest.raises(InvalidPhone):
        normalise_mobile("01 23 45 67 89", "fr-FR")


def test_a_vin_never_contains_i_o_or_q() -> None:
    assert normalise_vin("vf1 rfb00067123456") == "VF1RFB00067123456"
    with pytest.raises(ValueError, match="I, O or Q"):
        normalise_vin("VF1RFB0OO67123456")


def test_a_password_must_be_long_strong_and_impersonal() -> None:
    policy = PasswordPolicy()
    assert policy.problems("Velvet-Harbour-Lantern-42") == []
    assert policy.problems("Short-1a")[0].code == "password_too_short"
    assert policy.problems("passwordpassword")[0].code == "password_too_weak"
    assert policy.problems("Jeanne-Orchard-Compass", ["jeanne.martin@example.fr"])[0].code == "password_personal"


@pytest.mark.parametrize("password", [
    "Leaseline2026!",  # the service's own name and the year
    "Summer2024!!",  # a season and a year
    "Bruxelles2026",  # a city and a year
    "Antwerpen2026",
    "Printemps2026",  # seasons in French and Dutch
    "Herfst2026!!",
    "Welkom2026!!",
    "P@ssw0rd2026!!",
    "Portaal-2026!",
])
def test_the_service_s_own_words_and_a_word_with_a_year_are_too_easy_to_guess(password: str) -> None:
    (problem,) = PasswordPolicy().problems(password)
    assert problem.code == "password_too_weak" and "Add another word" in problem.msg, "it says how to do better"


@pytest.mark.parametrize("password", [
    "Velvet-Harbour-Lantern-42", "Zonnebloem-Tafel-8", "MonVeloBleu2026!", "k8#Rq2!vLp9z", "Leaseline-Velvet-Harbour-42",
])
def test_passphrases_and_random_passwords_stay_accepted(password: str) -> None:
    assert PasswordPolicy().problems(password) == []


PASSPHRASE_100 = (
    "the quiet heron waits by the copper canal while seven lanterns drift south past the old mill of Gent"
)


def test_a_passphrase_longer_than_the_strength_estimator_takes_is_judged_not_crashed() -> None:
    policy = PasswordPolicy()
    assert len(PASSPHRASE_100) == 100
    assert policy.problems(PASSPHRASE_100) == []
    assert policy.problems("x" * 128)[0].code == "password_too_weak", "up to the maximum, strength is still judged"
    assert policy.problems("x" * 129)[0].code == "password_too_long"


def test_a_long_password_weak_in_its_first_72_characters_is_refused_whatever_follows() -> None:
    weak_start = "password" * 9 + "Q7#vLm2@pX9!kR4$wZ"
    assert PasswordPolicy().problems(weak_start)[0].code == "password_too_weak"


def test_a_name_hidden_after_the_72nd_character_is_still_found() -> None:
    hidden = PASSPHRASE_100[:80] + " jeanne"
    assert PasswordPolicy().problems(hidden, ["Jeanne"])[0].code == "password_personal"


def test_five_failures_lock_for_15_minutes_then_30_60_120_then_for_good() -> None:
    policy, state, durations = LockoutPolicy(), LockState(), []
    now = NOON
    for _ in range(5):
        for _ in range(5):
            outcome = after_failure(state, now, policy)
            state = outcome.state
        assert outcome.newly_locked
        durations.append(None if state.until is None else state.until - now)
        now = (state.until or now) + timedelta(seconds=1)
    assert durations == [timedelta(minutes=m) for m in (15, 30, 60, 120)] + [None]


def test_failures_during_a_lock_are_not_counted() -> None:
    locked = LockState(failures=0, locks=1, locked=True, until=NOON + timedelta(minutes=15))
    assert after_failure(locked, NOON, LockoutPolicy()).state == locked


def test_access_ends_18_months_after_the_last_contract_and_never_while_one_runs() -> None:
    assert add_months(date(2026, 8, 31), 18) == date(2028, 2, 29)
    ended = [KnownContract("A", False, date(2025, 3, 10)), KnownContract("B", False, date(2026, 1, 31))]
    assert access_ends_on(ended) == date(2027, 7, 31)
    assert access_ends_on([*ended, KnownContract("C", True)]) is None


def _access_end(contracts: list[dict]) -> date | None:
    return access_ends_on(KnownContract(c["number"], c["running"], c["closed_on"].date() if c["closed_on"] else None)
                          for c in contracts)


def _closings_in_order(closings: list[tuple[str, datetime, bool]]) -> date | None:
    contracts: list[dict] = []
    none_running_since = None
    for number, closed_at, others_running in closings:
        contracts, none_running_since = after_closing(contracts, none_running_since, number=number,
                                                      closed_at=closed_at, others_running=others_running)
    return _access_end(contracts)


def test_two_closings_of_one_customer_give_the_same_access_end_in_either_order() -> None:
    january = datetime(2026, 1, 31, tzinfo=UTC)
    june = datetime(2026, 6, 30, tzinfo=UTC)
    first = ("L1", january, True)  # L2 still ran then
    last = ("L2", june, False)  # nothing runs any more
    assert _closings_in_order([first, last]) == date(2027, 12, 30)
    assert _closings_in_order([last, first]) == date(2027, 12, 30), "the older closing's 'yes' is outdated"
    assert _closings_in_order([first, last, last]) == date(2027, 12, 30), "a re-sent closing changes nothing"


def test_a_closing_that_names_a_running_contract_not_heard_of_keeps_access_open() -> None:
    january = datetime(2026, 1, 31, tzinfo=UTC)
    june = datetime(2026, 6, 30, tzinfo=UTC)
    assert _closings_in_order([("L1", january, True)]) is None
    # an older "no" handled late does not close what a later "yes" still saw running
    assert _closings_in_order([("L2", june, True), ("L1", january, False)]) is None
    # the same day, "no" wins whatever the order
    assert _closings_in_order([("L1", june, True), ("L2", june, False)]) == date(2027, 12, 30)
    assert _closings_in_order([("L2", june, False), ("L1", june, True)]) == date(2027, 12, 30)


def test_a_placeholder_written_before_it_carried_a_date_goes_with_the_next_no() -> None:
    legacy = [{"number": "unseen-L1", "running": True, "closed_on": None},
              {"number": "L1", "running": False, "closed_on": datetime(2026, 1, 31, tzinfo=UTC)}]
    contracts, _ = after_closing(legacy, None, number="L2", closed_at=datetime(2026, 6, 30, tzinfo=UTC),
                                 others_running=False)
    assert _access_end(contracts) == date(2027, 12, 30)


def test_a_single_use_token_tells_used_superseded_expired_and_forged_apart() -> None:
    issued = tokens.issue_token("cus_1", NOON, tokens.ACTIVATION_TTL)
    secret = issued.token.split(".", 1)[1]
    current = issued.stored
    assert tokens.check_single_use_token(secret, current, [], NOON, what="activation") is None
    late = tokens.check_single_use_token(secret, current, [], NOON + timedelta(hours=72), what="activation")
    assert late is not None and late.code == "activation_expired"
    used = tokens.spend(current, [], "used")
    assert tokens.check_single_use_token(secret, None, used, NOON, what="activation").code == "activation_already_used"
    superseded = tokens.spend(current, [], "superseded")
    assert tokens.check_single_use_token(secret, None, superseded, NOON, what="activation").code == "activation_superseded"
    assert tokens.check_single_use_token("x" * 43, current, used, NOON, what="activation").code == "activation_invalid"
    assert secret not in str(current), "only the hash is kept"


def test_a_code_has_six_digits_lives_ten_minutes_and_dies_after_five_wrong_tries() -> None:
    issued = codes.issue_code(NOON, 0)
    assert len(issued.code) == 6 and issued.code.isdigit()
    stored, wrong = issued.stored, f"{(int(issued.code) + 1) % 10**6:06d}"
    for attempt in range(5):
        check = codes.check_code(stored, wrong, NOON)
        stored = check.stored
    assert check.refusal.code == "code_dead"
    assert codes.check_code(stored, issued.code, NOON).refusal.code == "code_dead"
    assert codes.check_code(issued.stored, issued.code, NOON + timedelta(minutes=10)).refusal.code == "code_expired"
    assert codes.check_code(issued.stored, issued.code, NOON + timedelta(minutes=9)).ok


def test_a_code_sent_again_keeps_the_wrong_tries_of_the_one_it_replaces() -> None:
    first = codes.issue_code(NOON, 0)
    stored = first.stored
    for _ in range(3):
        stored = codes.check_code(stored, f"{(int(first.code) + 1) % 10**6:06d}", NOON).stored
    second = codes.issue_code(NOON, 1, wrong_tries_so_far=stored["tries"])
    wrong = f"{(int(second.code) + 1) % 10**6:06d}"
    check = codes.check_code(second.stored, wrong, NOON)
    assert check.refusal.details == {"tries_left": 1}
    assert codes.check_code(check.stored, wrong, NOON).refusal.code == "code_dead", "five wrong in all, not per code"


def test_a_remembered_device_is_forgotten_after_180_days_without_use() -> None:
    device = {"remembered": True, "revoked_at": None, "last_used_at": NOON}
    assert codes.remembered_device_usable(device, NOON + timedelta(days=179))
    assert not codes.remembered_device_usable(device, NOON + timedelta(days=180))


def test_a_code_nobody_has_matches_not_even_the_code_it_was_issued_as_and_dies_like_any_other() -> None:
    issued = codes.issue_code(NOON, 0)
    stored = codes.code_nobody_has(issued)
    assert stored.keys() == issued.stored.keys() and stored["expires_at"] == issued.stored["expires_at"]
    answers = []
    for _ in range(5):
        check = codes.check_code(stored, issued.code, NOON)
        stored = check.stored
        answers.append((check.refusal.code, check.refusal.details.get("tries_left")))
    assert answers == [("code_wrong", 4), ("code_wrong", 3), ("code_wrong", 2), ("code_wrong", 1), ("code_dead", None)]
    assert codes.check_code(stored, issued.code, NOON + timedelta(minutes=10)).refusal.code == "code_dead"


def test_only_three_codes_are_sent_per_authorisation() -> None:
    with pytest.raises(Exception, match="at most 3"):
        codes.issue_code(NOON, 3)


def test_audit_ids_sort_in_the_order_they_were_made_within_one_millisecond() -> None:
    moments = [NOON + timedelta(microseconds=n) for n in (0, 1, 999, 1000, 10**9)]
    ids = [tokens.time_ordered_id("aud", moment) for moment in moments]
    assert sorted(ids) == ids and len(set(ids)) == len(ids)
