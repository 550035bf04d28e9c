"""The password policy: long enough, and not guessable from a dictionary or from the person's own details."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date

from zxcvbn import zxcvbn

from services.identity.domain.errors import FieldProblem

MIN_LENGTH = 12
MAX_LENGTH = 128  # bounds the cost of the strength estimate and of the hash
# zxcvbn: "very unguessable: strong protection from offline slow-hash scenario" (>= 10^10 guesses).
# Score 3 (>= 10^8) is not enough: zxcvbn adds 10^4 guesses per extra piece of a pattern for not knowing
# its shape, so any three trivial pieces reach 10^8 on that alone ("Summer" + "2024" + "!!": 1.02e8,
# "P@ssw0rd2026!!": 1.0e8). At 10^10, at least one piece must be something an attacker has to search for.
MIN_SCORE = 4
#: Words everyone who attacks this service tries first: its name, what it is, the portal in our languages.
SERVICE_WORDS = ("leaseline", "lease", "leasing", "portal", "portail", "portaal", "klantenportaal", "espaceclient",
                 "customer", "client", "klant")
#: zxcvbn's dictionaries are English: it knows "Summer" and "Winter", not the seasons of our other languages.
SEASONS_FR_NL = ("printemps", "ete", "été", "automne", "hiver", "lente", "voorjaar", "zomer", "herfst", "najaar")
#: zxcvbn 4.5 knows years only up to 2019 (its "recent year" pattern, from 2017): later ones it scores as
#: four random digits (10^4 guesses instead of ~20), which lets "Antwerpen2026" pass. Given as its own
#: words, they count as what they are.
YEARS_ZXCVBN_KNOWS_UNTIL = 2019
SCORE_3_HINT = "Add another word or two. Uncommon words are better."
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

    def problems(self, password: str, personal: Iterable[str] = (), *, field: str = "password",
                 today: date | None = None) -> list[FieldProblem]:
        """Every reason ``password`` is refused (empty when it is acceptable). ``today`` (the service's
        clock) decides which years count as recent; without it, the machine's date."""
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
        guessable = [*inputs, *SERVICE_WORDS, *SEASONS_FR_NL, *recent_years(today or date.today())]
        result = zxcvbn(password[:STRENGTH_ESTIMATE_LENGTH], user_inputs=guessable, max_length=STRENGTH_ESTIMATE_LENGTH)
        if result["score"] < self.min_score:
            feedback = result.get("feedback") or {}
            # zxcvbn gives advice only below score 3; a score-3 refusal says what to do all the same.
            hint = " ".join(filter(None, [feedback.get("warning"), *feedback.get("suggestions", [])])) or SCORE_3_HINT
            message = f"this password is too easy to guess: {hint}"
            return [FieldProblem(loc, message, "password_too_weak")]
        return []


def recent_years(today: date) -> list[str]:
    """The years zxcvbn does not know as years, up to next year's (people put the coming year too)."""
    return [str(year) for year in range(YEARS_ZXCVBN_KNOWS_UNTIL + 1, today.year + 2)]


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
