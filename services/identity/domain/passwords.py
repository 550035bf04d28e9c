"""The password policy: long enough, and not guessable from a dictionary or from the person's own details."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from zxcvbn import zxcvbn

from services.identity.domain.errors import FieldProblem

MIN_LENGTH = 12
MAX_LENGTH = 128  # bounds the cost of the strength estimate and of the hash
MIN_SCORE = 3  # zxcvbn: "safely unguessable: moderate protection from offline slow-hash scenario"
# zxcvbn refuses longer inputs (ValueError) because its matching grows faster than the length: on this
# machine a random 128-character password takes ~1.5 s, the first 72 of it ~0.05 s. Longer passwords are
# judged on their first 72 characters: what follows can only add guesses, so nothing weak gets through
# (a password weak in its first 72 characters is refused even if its tail is strong: an acceptable cost).
STRENGTH_ESTIMATE_LENGTH = 72


@dataclass(frozen=True)
class PasswordPolicy:
    min_length: int = MIN_LENGTH
    max_length: int = MAX_LENGTH
    min_score: int = MIN_SCORE

    def problems(self, password: str, personal: Iterable[str] = (), *, field: str = "password") -> list[FieldProblem]:
        """Every reason ``password`` is refused (empty when it is acceptable)."""
        loc = ("body", field)
        if len(password) < self.min_length:
            return [FieldProblem(loc, f"use at least {self.min_length} characters", "password_too_short")]
        if len(password) > self.max_length:
            return [FieldProblem(loc, f"use at most {self.max_length} characters", "password_too_long")]
        inputs = _personal_words(personal)
        lowered = password.lower()
        for word in inputs:
            if len(word) >= 4 and word in lowered:
                return [FieldProblem(loc, "do not use your name or email address in your password", "password_personal")]
        result = zxcvbn(password[:STRENGTH_ESTIMATE_LENGTH], user_inputs=inputs, max_length=STRENGTH_ESTIMATE_LENGTH)
        if result["score"] < self.min_score:
            feedback = result.get("feedback") or {}
            hint = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])]))
            message = "this password is too easy to guess" + (f": {hint}" if hint else "")
            return [FieldProblem(loc, message, "password_too_weak")]
        return []


def _personal_words(personal: Iterable[str]) -> list[str]:
    words: set[str] = set()
    for item in personal:
        if not item:
            continue
        text = item.lower()
        words.add(text)
        local, _, domain = text.partition("@")
        words.add(local)
        if domain:
            words.add(domain.split(".")[0])
        for part in local.replace("-", ".").replace("_", ".").replace("+", ".").split("."):
            words.add(part)
        for part in text.split():
            words.add(part)
    return sorted(w for w in words if w)
