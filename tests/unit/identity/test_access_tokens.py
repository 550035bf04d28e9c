from datetime import UTC, datetime, timedelta

import pytest

from services.identity.adapters.signing import AccessTokens, generate_key
from services.identity.domain.errors import Refusal

NOON = datetime(2026, 11, 22, 12, 0, tzinfo=UTC)
CLAIMS = {"sub": "cus_1", "sid": "ses_1"}


def tokens() -> AccessTokens:
    return AccessTokens(issuer="leaseline-identity", audience="leaseline", ttl=timedelta(minutes=15))


def refusal_code(issuer: AccessTokens, token: str, now: datetime) -> str:
    with pytest.raises(Refusal) as refused:
        issuer.verify(token, now)
    return refused.value.code


def test_after_a_rotation_tokens_of_the_previous_key_live_out_their_lifetime() -> None:
    old, new = generate_key(), generate_key()
    before = tokens()
    before.use(old)
    signed_before = before.issue(CLAIMS, NOON)

    after = tokens()
    after.use(new, previous=[(old, NOON + timedelta(hours=1))])
    assert after.verify(signed_before, NOON + timedelta(minutes=14))["sub"] == "cus_1"
    assert refusal_code(after, signed_before, NOON + timedelta(minutes=15)) == "access_token_expired"
    assert [k["kid"] for k in after.jwks(NOON)["keys"]] == [new.kid, old.kid]
    assert after.verify(after.issue(CLAIMS, NOON), NOON)["sub"] == "cus_1", "the new key signs"


def test_a_previous_key_is_dropped_once_its_moment_has_passed() -> None:
    old, new = generate_key(), generate_key()
    signer = tokens()
    signer.use(old)
    late = signer.issue(CLAIMS, NOON + timedelta(minutes=59))  # e.g. another instance not yet restarted
    after = tokens()
    after.use(new, previous=[(old, NOON + timedelta(hours=1))])
    assert after.verify(late, NOON + timedelta(minutes=59, seconds=59))
    assert refusal_code(after, late, NOON + timedelta(hours=1)) == "access_token_invalid"
    assert [k["kid"] for k in after.jwks(NOON + timedelta(hours=1))["keys"]] == [new.kid]


def test_without_the_previous_key_its_tokens_are_refused_at_once() -> None:
    old, new = generate_key(), generate_key()
    signer = tokens()
    signer.use(old)
    token = signer.issue(CLAIMS, NOON)
    signer.use(new)
    assert refusal_code(signer, token, NOON + timedelta(minutes=1)) == "access_token_invalid"


def test_the_current_key_never_expires_even_if_once_listed_as_previous() -> None:
    key = generate_key()
    signer = tokens()
    signer.use(key, previous=[(key, NOON)])  # back to a key that was retired
    assert signer.verify(signer.issue(CLAIMS, NOON + timedelta(days=1)), NOON + timedelta(days=1))


async def test_a_token_naming_an_unknown_key_makes_an_instance_read_the_keys_again_but_not_at_every_call(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A made-up key id must not become a way to make identity read its store at will."""
    from services.identity.adapters import signing

    ours, theirs = generate_key(), generate_key()
    verifier = tokens()
    verifier.use(ours)
    reads: list[str] = []

    async def other_keys(*, current_kid: str, **_: object) -> list[tuple[signing.SigningKey, None]]:
        reads.append(current_kid)
        return [(theirs, None)]

    monkeypatch.setattr(signing, "other_keys", other_keys)

    class Clock:
        def now(self) -> datetime:
            return NOON

    watch = signing.KeyWatch(verifier, None, None, Clock(), keep_for=timedelta(hours=1), interval_s=30)  # type: ignore[arg-type]
    signer = tokens()
    signer.use(theirs)
    token = signer.issue(CLAIMS, NOON)
    await watch.learn_key_of(verifier.issue(CLAIMS, NOON))
    assert reads == [], "a token of a known key reads nothing"
    await watch.learn_key_of(token)
    assert reads == [ours.kid] and verifier.verify(token, NOON)["sub"] == "cus_1"
    signer.use(generate_key())
    await watch.learn_key_of(signer.issue(CLAIMS, NOON))
    assert reads == [ours.kid], "another unknown key within 5 s reads nothing more"
