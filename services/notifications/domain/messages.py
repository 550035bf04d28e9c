"""Which message each event leads to: THE table.

One line per message: the event type, the template, the channel(s), whether it is transactional or
marketing, whether an SMS may wait for the end of quiet hours, where the main link points, which
field says when the message is no longer worth sending, the channel to fall back on when the
first one cannot deliver, and how many segments its text message may take. Adding a message for a
new event = its templates + one line here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Literal
from urllib.parse import quote, urlencode, urlsplit

Channel = Literal["email", "sms"]


class Category(str, Enum):
    TRANSACTIONAL = "transactional"  # always sent, whatever the marketing consent
    MARKETING = "marketing"  # only with recorded consent for that channel; List-Unsubscribe


class Urgency(str, Enum):
    IMMEDIATE = "immediate"  # codes, security notices: never delayed
    DEFERRABLE = "deferrable"  # an SMS that waits for the end of quiet hours


CHOSEN = "chosen"  # the channel is the one the event names (its ``channel`` field)


class UnsafeLink(ValueError):
    """A link a message would carry is not one a customer can trust."""


_NOT_IN_A_LINK = frozenset('<>"\\`')


def checked_link(url: str, portal_base: str) -> str:
    """A link a message may carry: under the portal's own base (plain http is fine for a local
    portal), or absolute https on a named host, without credentials (``https://bank@evil``),
    spaces or control characters. Links from event fields (a report, an invoice, the terms) come
    from other services: a relative, ``http:`` or ``javascript:`` one would reach the customer as
    our link."""
    if not url or any(ch.isspace() or ord(ch) < 0x20 or ord(ch) == 0x7F or ch in _NOT_IN_A_LINK for ch in url):
        raise UnsafeLink(f"not a well-formed link: {url[:200]!r}")
    base = portal_base.rstrip("/")
    if url == base or url.startswith((base + "/", base + "?")):
        return url
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.hostname or "@" in parts.netloc:
        raise UnsafeLink(f"not an absolute https link: {url[:200]!r}")
    return url


@dataclass(frozen=True)
class PortalLink:
    """A link into the customer portal: ``/activate?token=<activation_token>``. The path may name
    event fields (``/messages/{thread_id}``); query values name context fields (unsealed secrets)."""

    path: str
    query: Mapping[str, str] = field(default_factory=dict)

    def build(self, base_url: str, context: Mapping[str, Any]) -> str:
        path = self.path.format(**{k: quote(str(v), safe="") for k, v in context.items() if isinstance(v, str)})
        url = base_url.rstrip("/") + path
        if self.query:
            url += "?" + urlencode({name: str(context[source]) for name, source in self.query.items()})
        return url


@dataclass(frozen=True)
class FieldLink:
    """A link the event carries already (report, invoice, terms document)."""

    name: str

    def build(self, base_url: str, context: Mapping[str, Any]) -> str | None:
        value = context.get(self.name)
        return checked_link(str(value), base_url) if value else None


Link = PortalLink | FieldLink


def portal(path: str, **query: str) -> PortalLink:
    return PortalLink(path, dict(query))


def event_field(name: str) -> FieldLink:
    return FieldLink(name)


# Codes must arrive in one piece (a line says so: ``sms_segments=1``); any other text may take a few
# segments, no more: past that it costs more than it is worth and reads badly, and the message goes
# by its line's fallback channel.
MAX_SMS_SEGMENTS = 3


@dataclass(frozen=True)
class MessageSpec:
    event_type: str
    template: str
    channels: tuple[str, ...]  # "email", "sms" or CHOSEN
    category: Category = Category.TRANSACTIONAL
    urgency: Urgency = Urgency.IMMEDIATE
    link: Link | None = None
    expires: str | None = None  # event field after which sending is pointless (a code, a link)
    fallback: Channel | None = None  # where to go when the channel cannot deliver
    when: Mapping[str, Any] = field(default_factory=dict)  # only for events whose fields match
    sms_segments: int = MAX_SMS_SEGMENTS  # the most segments its text message may take

    def applies_to(self, data: Mapping[str, Any]) -> bool:
        return all(data.get(name) == value for name, value in self.when.items())


T, M = Category.TRANSACTIONAL, Category.MARKETING
NOW, DEFER = Urgency.IMMEDIATE, Urgency.DEFERRABLE
EMAIL, SMS = ("email",), ("sms",)

# fmt: off
MESSAGES: tuple[MessageSpec, ...] = (
    MessageSpec("customer.registered",                "activation",                 EMAIL,      T, NOW,   portal("/activate", token="activation_token"), "activation_expires_at"),
    MessageSpec("customer.activation_link_reissued",  "activation",                 EMAIL,      T, NOW,   portal("/activate", token="activation_token"), "activation_expires_at"),
    MessageSpec("organisation_user.invited",          "organisation_invitation",    EMAIL,      T, NOW,   portal("/activate", token="activation_token"), "activation_expires_at"),
    MessageSpec("customer.already_registered",        "already_registered",         EMAIL,      T, NOW,   portal("/forgot-password")),
    MessageSpec("customer.password_reset_requested",  "password_reset",             EMAIL,      T, NOW,   portal("/reset-password", token="reset_token"), "reset_expires_at"),
    MessageSpec("customer.password_changed",          "password_changed",           EMAIL,      T, NOW,   portal("/forgot-password")),
    MessageSpec("customer.account_locked",            "account_locked",             EMAIL,      T, NOW,   portal("/forgot-password")),
    MessageSpec("customer.account_unlocked",          "account_unlocked",           EMAIL,      T, NOW,   portal("/login")),
    MessageSpec("customer.device_code_issued",        "device_code",                (CHOSEN,),  T, NOW,   None, "code_expires_at", fallback="email", sms_segments=1),
    MessageSpec("customer.registration_code_issued",  "registration_code",          SMS,        T, NOW,   None, "code_expires_at", sms_segments=1),
    MessageSpec("device.authorised",                  "new_device",                 EMAIL,      T, NOW,   portal("/security/devices")),
    MessageSpec("customer.access_ended",              "access_ended",               EMAIL,      T, NOW),
    MessageSpec("customer.access_restored",           "access_restored",            EMAIL,      T, NOW,   portal("/login")),
    MessageSpec("contract.nearing_end",               "lease_end_decision",         EMAIL,      T, NOW,   portal("/contracts/{contract_number}/end-of-lease"), when={"milestone": "decision_6_months"}),
    MessageSpec("contract.nearing_end",               "lease_end_return",           EMAIL,      T, NOW,   portal("/contracts/{contract_number}/return"), when={"milestone": "return_3_weeks"}),
    MessageSpec("appointment.booked",                 "appointment_confirmation",   EMAIL,      T, NOW,   portal("/contracts/{contract_number}/return")),
    MessageSpec("appointment.reminder_due",           "appointment_reminder",       SMS,        T, DEFER, None, "starts_at", fallback="email"),
    MessageSpec("appointment.cancelled",              "appointment_cancelled",      EMAIL,      T, NOW,   portal("/contracts/{contract_number}/return")),
    MessageSpec("inspection.completed",               "inspection_report",          EMAIL,      T, NOW,   event_field("report_url")),
    MessageSpec("counter_inspection.acknowledged",    "counter_inspection",         EMAIL,      T, NOW),
    MessageSpec("invoice.issued",                     "invoice",                    EMAIL,      T, NOW,   event_field("document_url")),
    MessageSpec("secure_message.replied",             "secure_message_reply",       EMAIL,      T, NOW,   portal("/messages/{thread_id}")),
    MessageSpec("terms.acceptance_required",          "terms_acceptance_required",  EMAIL,      T, NOW,   event_field("document_url")),
    MessageSpec("terms.changed",                      "terms_changed",              EMAIL,      T, NOW,   event_field("document_url")),
    MessageSpec("terms.accepted",                     "terms_accepted",             EMAIL,      T, NOW,   event_field("document_url")),
    MessageSpec("privacy_request.received",           "privacy_request_received",   EMAIL,      T, NOW,   portal("/privacy/requests/{request_id}")),
    MessageSpec("privacy_request.completed",          "privacy_request_completed",  EMAIL,      T, NOW,   portal("/privacy/requests/{request_id}")),
)
# fmt: on


class MessageTable:
    """The table, indexed by event type, with its invariants checked once."""

    def __init__(self, specs: tuple[MessageSpec, ...] = MESSAGES) -> None:
        self.specs = specs
        self._by_type: dict[str, list[MessageSpec]] = {}
        for spec in specs:
            self._by_type.setdefault(spec.event_type, []).append(spec)
            for channel in spec.channels:
                if channel not in ("email", "sms", CHOSEN):
                    raise ValueError(f"{spec.template}: unknown channel {channel!r}")
            if spec.fallback is not None and spec.fallback in spec.channels:
                raise ValueError(f"{spec.template}: falls back on a channel it already uses")
            if spec.sms_segments < 1:
                raise ValueError(f"{spec.template}: a text message takes at least one segment")

    @property
    def event_types(self) -> list[str]:
        return sorted(self._by_type)

    @property
    def templates(self) -> list[str]:
        return sorted({spec.template for spec in self.specs})

    def for_event(self, event_type: str, data: Mapping[str, Any]) -> list[MessageSpec]:
        return [spec for spec in self._by_type.get(event_type, []) if spec.applies_to(data)]

    def channels_of(self, spec: MessageSpec) -> set[str]:
        """Every channel a template may be rendered for (so every variant must exist)."""
        channels = {c for c in spec.channels if c != CHOSEN}
        if CHOSEN in spec.channels:
            channels |= {"email", "sms"}
        if spec.fallback:
            channels.add(spec.fallback)
        return channels
