"""Normal forms: one email is one username however it was typed; phones in E.164."""

from __future__ import annotations

import functools

import phonenumbers
from email_validator import EmailNotValidError, validate_email

DEFAULT_REGION = {"fr-FR": "FR", "fr-CA": "CA", "fr-BE": "BE", "nl-BE": "BE", "nl-NL": "NL", "en": None}


class InvalidEmail(ValueError):
    pass


class InvalidPhone(ValueError):
    pass


@functools.lru_cache(maxsize=8192)  # the same few addresses sign in again and again; checking costs
def normalise_email(raw: str) -> str:
    """Trimmed, syntax-checked, local part and domain lower-cased (IDN domains in their ASCII form).

    Lower-casing the local part is a deliberate choice: no mainstream provider treats case as
    significant, and two accounts differing only by case would be a support and phishing hazard.
    """
    text = raw.strip()
    try:
        checked = validate_email(text, check_deliverability=False)
    except EmailNotValidError as error:
        raise InvalidEmail(str(error)) from None
    local = checked.local_part.lower()
    domain = (checked.ascii_domain or checked.domain).lower()
    return f"{local}@{domain}"


def normalise_mobile(raw: str, locale: str | None = None) -> str:
    """E.164 (``+33612345678``); a national number is read in the locale's country."""
    region = DEFAULT_REGION.get(locale or "en")
    try:
        number = phonenumbers.parse(raw.strip(), region)
    except phonenumbers.NumberParseException as error:
        raise InvalidPhone(f"not a phone number: {error}") from None
    if not phonenumbers.is_valid_number(number):
        raise InvalidPhone("not a valid phone number (give it with its country code, e.g. +32470123456)")
    if phonenumbers.number_type(number) not in (
        phonenumbers.PhoneNumberType.MOBILE,
        phonenumbers.PhoneNumberType.FIXED_LINE_OR_MOBILE,
    ):
        raise InvalidPhone("not a mobile number: codes are sent by text message")
    return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)


def normalise_vin(raw: str) -> str:
    """Upper case, spaces removed; 17 characters, never I, O or Q."""
    vin = "".join(raw.split()).upper()
    if len(vin) != 17:
        raise ValueError(f"a VIN has 17 characters, this one has {len(vin)}")
    forbidden = sorted(set(vin) & set("IOQ"))
    if forbidden:
        raise ValueError(f"a VIN never contains the letters I, O or Q (found {', '.join(forbidden)}); did you mean 1 or 0?")
    if not vin.isalnum() or not vin.isascii():
        raise ValueError("a VIN has only letters and digits")
    return vin


class BlankName(ValueError):
    pass


def normalise_name(raw: str) -> str:
    """Runs of whitespace read as one space, none at either end. A name of whitespace alone is
    refused here, not later: it would reach the events as an empty name."""
    name = " ".join(raw.split())
    if not name:
        raise BlankName("must not be blank")
    return name
