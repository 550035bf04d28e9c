"""The argon2id cost: any of OWASP's equivalent configurations or above, refused below all of them."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.identity.adapters.hashing import OWASP_CONFIGURATIONS, PasswordHasher, meets_owasp
from services.identity.settings import IdentitySettings
from shared.crypto import Keyring


@pytest.mark.parametrize(("memory_kib", "time_cost"), OWASP_CONFIGURATIONS)
def test_each_owasp_configuration_and_more_of_either_is_accepted(memory_kib: int, time_cost: int) -> None:
    assert meets_owasp(memory_kib, time_cost, 1)
    assert meets_owasp(memory_kib + 1024, time_cost, 1) and meets_owasp(memory_kib, time_cost + 1, 2)


@pytest.mark.parametrize(("memory_kib", "time_cost"), OWASP_CONFIGURATIONS)
def test_a_kib_less_or_a_pass_fewer_than_any_configuration_meets_none(memory_kib: int, time_cost: int) -> None:
    # The five trade memory for passes along one line: falling short of one in either never meets another.
    assert not meets_owasp(memory_kib - 1, time_cost, 1)
    assert not meets_owasp(memory_kib, time_cost - 1, 1)
    assert not meets_owasp(memory_kib, time_cost, 0), "at least one lane"


def test_trading_memory_for_passes_is_not_a_free_cut() -> None:
    assert not meets_owasp(19455, 2, 1), "19 MiB less a KiB with 2 passes meets none"
    assert not meets_owasp(7168, 4, 1) and not meets_owasp(47103, 1, 1) and not meets_owasp(65536, 0, 1)
    assert meets_owasp(12288, 5, 1) and meets_owasp(47104, 2, 1)


def test_settings_refuse_a_cost_below_every_configuration_naming_them() -> None:
    keys = Keyring.generate_spec("unit")
    assert IdentitySettings(event_secret_keys=keys, argon2_memory_kib=7168, argon2_time_cost=5).argon2_time_cost == 5
    with pytest.raises(ValidationError) as refused:
        IdentitySettings(event_secret_keys=keys, argon2_memory_kib=9216, argon2_time_cost=3)
    message = str(refused.value)
    assert "ARGON2_MEMORY_KIB=9216, ARGON2_TIME_COST=3" in message
    assert all(f"{m}/{t}" in message for m, t in OWASP_CONFIGURATIONS), message


def test_the_hasher_refuses_a_cost_below_every_configuration_and_hashes_with_the_one_given() -> None:
    with pytest.raises(ValueError, match="below every OWASP configuration"):
        PasswordHasher(memory_kib=12288, time_cost=2)
    hasher, default = PasswordHasher(memory_kib=7168, time_cost=5, workers=1), PasswordHasher(workers=1)
    try:
        stored = hasher.hash_now("Velvet-Harbour-Lantern-42")
        assert "$m=7168,t=5,p=1$" in stored
        assert hasher.verify_now(stored, "Velvet-Harbour-Lantern-42")
        assert hasher.needs_rehash(default.hash_now("x" * 12)), "other parameters: rehashed at the next sign-in"
        assert not hasher.needs_rehash(stored)
    finally:
        hasher.close()
        default.close()
