"""Locales: which templates a locale falls back on, its time zone, and how it writes dates and money.

Written out here rather than taken from the operating system's locale database, which varies from
one machine to the next; the formats follow CLDR for the six locales the portal speaks.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

LOCALES = ("fr-FR", "fr-CA", "fr-BE", "nl-BE", "nl-NL", "en")
NBSP = "\u00a0"
NNBSP = "\u202f"  # narrow no-break space: French thousands separator

_FR_MONTHS = ("janvier", "février", "mars", "avril", "mai", "juin", "juillet", "août", "septembre", "octobre",
              "novembre", "décembre")
_FR_DAYS = ("lundi", "mardi", "mercredi", "jeudi", "vendredi", "samedi", "dimanche")
_NL_MONTHS = ("januari", "februari", "maart", "april", "mei", "juni", "juli", "augustus", "september", "oktober",
              "november", "december")
_NL_DAYS = ("maandag", "dinsdag", "woensdag", "donderdag", "vrijdag", "zaterdag", "zondag")
_EN_MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
              "November", "December")
_EN_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


@dataclass(frozen=True)
class LocaleFormat:
    tag: str
    language: str
    time_zone: str
    decimal: str
    group: str
    currency_before: bool  # "€ 1.234,56" (nl) rather than "1 234,56 €" (fr)
    symbols: dict[str, str]
    months: tuple[str, ...]
    days: tuple[str, ...]
    time_pattern: str  # {h} {hh} {mm}

    def money(self, amount: Decimal, currency: str) -> str:
        quantised = Decimal(amount).quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)
        sign = "-" if quantised < 0 else ""
        units, cents = f"{abs(quantised):.2f}".split(".")
        groups = []
        while len(units) > 3:
            groups.insert(0, units[-3:])
            units = units[:-3]
        groups.insert(0, units)
        number = f"{sign}{self.group.join(groups)}{self.decimal}{cents}"
        symbol = self.symbols.get(currency, currency)
        if self.currency_before:
            return f"{symbol}{NBSP if self.language == 'nl' else ''}{number}"
        return f"{number}{NBSP}{symbol}"

    def date(self, value: date) -> str:
        return f"{self.day_month(value)} {value.year}"

    def day_month(self, value: date) -> str:
        """The date without its year, for a text about the next few days (an SMS reminder)."""
        day = "1er" if self.language == "fr" and value.day == 1 else str(value.day)
        return f"{day} {self.months[value.month - 1]}"

    def long_date(self, value: date) -> str:
        return f"{self.days[value.weekday()]} {self.date(value)}"

    def time(self, value: datetime) -> str:
        return self.time_pattern.format(h=value.hour, hh=f"{value.hour:02d}", mm=f"{value.minute:02d}")

    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.time_zone)


_FR = dict(language="fr", decimal=",", currency_before=False, months=_FR_MONTHS, days=_FR_DAYS,
           time_pattern="{h}\u00a0h\u00a0{mm}")
# Taalunie: "10.40 uur", hours without a leading zero ("9.30 uur"), in Belgium and the Netherlands.
_NL = dict(language="nl", decimal=",", group=".", currency_before=True, months=_NL_MONTHS, days=_NL_DAYS,
           time_pattern="{h}.{mm}\u00a0uur")

FORMATS: dict[str, LocaleFormat] = {
    "fr-FR": LocaleFormat("fr-FR", time_zone="Europe/Paris", group=NNBSP, symbols={"EUR": "€", "CAD": "$CA"}, **_FR),
    "fr-BE": LocaleFormat("fr-BE", time_zone="Europe/Brussels", group=NNBSP, symbols={"EUR": "€", "CAD": "$CA"}, **_FR),
    "fr-CA": LocaleFormat("fr-CA", time_zone="America/Toronto", group=NBSP, symbols={"EUR": "€", "CAD": "$"}, **_FR),
    "nl-NL": LocaleFormat("nl-NL", time_zone="Europe/Amsterdam", symbols={"EUR": "€", "CAD": "C$"}, **_NL),
    "nl-BE": LocaleFormat("nl-BE", time_zone="Europe/Brussels", symbols={"EUR": "€", "CAD": "C$"}, **_NL),
    "en": LocaleFormat("en", language="en", time_zone="Europe/Paris", decimal=".", group=",", currency_before=True,
                       symbols={"EUR": "€", "CAD": "CA$"}, months=_EN_MONTHS, days=_EN_DAYS, time_pattern="{hh}:{mm}"),
}


_BEFORE_COLON = re.compile(r" :")
_BEFORE_HIGH_PUNCTUATION = re.compile(r" ([;!?])")


def french_spacing(text: str) -> str:
    """French punctuation keeps its space on its line: a no-break space before a colon and inside
    « », a narrow no-break space before ; ! ? (so that a line never starts with one of them when
    an email client wraps the text). Only spaces already written are replaced."""
    text = _BEFORE_COLON.sub(NBSP + ":", text)
    text = _BEFORE_HIGH_PUNCTUATION.sub(NNBSP + r"\1", text)
    return text.replace("« ", "«" + NBSP).replace(" »", NBSP + "»")


def template_chain(locale: str) -> tuple[str, ...]:
    """Where a locale's wording is looked for, most specific first: fr-CA → fr → en."""
    language = locale.split("-")[0]
    chain = [locale] if locale != language else []
    if language != "en":
        chain.append(language)
    chain.append("en")
    return tuple(chain)


def format_for(locale: str) -> LocaleFormat:
    return FORMATS.get(locale, FORMATS["en"])


def time_zone_for(locale: str, default: str) -> ZoneInfo:
    """The recipient's zone, derived from the market their locale belongs to (``en``: the default)."""
    if locale == "en" or locale not in FORMATS:
        return ZoneInfo(default)
    return FORMATS[locale].zone()


def recipient_zone(named: str | None, locale: str, default: str) -> ZoneInfo:
    """The zone an event names (a dealer's, for an appointment), else the one of the locale's market."""
    if named:
        try:
            return ZoneInfo(named)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return time_zone_for(locale, default)
