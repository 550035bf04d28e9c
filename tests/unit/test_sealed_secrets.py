import pytest

from shared.crypto import Keyring, SealError
from shared.events import CustomerRegistered


@pytest.fixture
def ring() -> Keyring:
    return Keyring.parse(Keyring.generate_spec("2026-11"))


def test_a_sealed_token_opens_with_the_same_ring_and_context(ring: Keyring) -> None:
    sealed = CustomerRegistered.seal(ring, "activation_token", "s3cr3t-token")
    assert sealed.startswith("sealed:v1:2026-11:")
    assert "s3cr3t-token" not in sealed
    assert ring.unseal(sealed, context=CustomerRegistered.seal_context("activation_token")) == "s3cr3t-token"


def test_a_sealed_value_copied_into_another_field_does_not_open(ring: Keyring) -> None:
    sealed = CustomerRegistered.seal(ring, "activation_token", "s3cr3t-token")
    with pytest.raises(SealError):
        ring.unseal(sealed, context="customer.password_reset_requested/v1/reset_token")


def test_a_tampered_value_does_not_open(ring: Keyring) -> None:
    sealed = ring.seal("123456", context="c")
    flipped = sealed[:-2] + ("A" if sealed[-2] != "A" else "B") + sealed[-1]
    with pytest.raises(SealError):
        ring.unseal(flipped, context="c")


def test_old_keys_still_open_after_rotation() -> None:
    old_spec = Keyring.generate_spec("old")
    old = Keyring.parse(old_spec)
    sealed = old.seal("654321", context="c")
    rotated = Keyring.parse(f"{Keyring.generate_spec('new')},{old_spec}")
    assert rotated.unseal(sealed, context="c") == "654321"
    assert rotated.seal("x", context="c").startswith("sealed:v1:new:")


def test_an_unknown_key_is_named_in_the_error(ring: Keyring) -> None:
    other = Keyring.parse(Keyring.generate_spec("elsewhere"))
    with pytest.raises(SealError, match="unknown key 'elsewhere'"):
        ring.unseal(other.seal("x", context="c"), context="c")


@pytest.mark.parametrize("spec", ["", "nocolon", "k:!!!", "k:AAAA"])
def test_bad_key_configuration_is_refused_with_a_reason(spec: str) -> None:
    with pytest.raises(ValueError):
        Keyring.parse(spec)
