"""Every message renders in every locale, with realistic data, nothing left unfilled."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import UTC, datetime
from email import policy
from email.parser import BytesParser
from typing import Any
from urllib.parse import parse_qs, urlsplit
from zoneinfo import ZoneInfo

import pytest

from services.notifications.adapters.email_message import Sender, build_email
from services.notifications.adapters.templates import TEMPLATES_DIR, SmsTooLong, TemplateError, TemplateRenderer
from services.notifications.domain.locales import LOCALES
from services.notifications.domain.messages import MessageTable, UnsafeLink, checked_link
from services.notifications.domain.sms import segments
from services.notifications.service_layer.recording import opened
from shared.events import catalogue as c
from tests.unit.examples import LONG_DEALER, RING, example_events

PORTAL = "https://portal.leaseline.example"
TABLE = MessageTable()
RENDERER = TemplateRenderer(portal_base_url=PORTAL, default_time_zone="Europe/Paris")
LEFTOVER = re.compile(r"\{\{|\}\}|\{%|%\}|\bNone\b|\bundefined\b")


def variants() -> list[c.Event]:
    """The examples, plus one event for each branch the templates take."""
    events = {e.event_type: e for e in example_events()}
    more: list[c.Event] = list(events.values())

    def like(event_type: str, **changes: Any) -> c.Event:
        event = events[event_type]
        return type(event).model_validate(event.model_dump() | changes)

    more += [
        like("contract.nearing_end", milestone="return_3_weeks", plate=None),
        like("customer.password_changed", reason="changed"),
        like("customer.password_changed", reason="forced_change"),
        like("customer.account_locked", locked_until=None),
        like("customer.account_unlocked", unlocked_by="adm_42"),
        like("customer.access_ended", reason="terms_rejected"),
        like("customer.access_ended", reason="closed_by_administrator"),
        like("appointment.booked", booked_by="customer"),
        like("appointment.booked", dealer=LONG_DEALER.model_dump()),
        like("appointment.reminder_due", dealer=LONG_DEALER.model_dump()),
        like("appointment.cancelled", reason="customer_request", travel_fee_charged=None),
        like("appointment.cancelled", reason="dealer_unavailable", travel_fee_charged=None),
        like("inspection.completed", signed_by_customer=False, currency="CAD"),
        like("terms.accepted", how="portal"),
        like("privacy_request.completed", outcome="partially_fulfilled", explanation_url="https://portal.example.com/x"),
        like("privacy_request.completed", outcome="refused"),
        like("device.authorised", remembered=False),
        like("customer.device_code_issued", channel="email"),
    ]
    for role in ("garage", "salesperson", "administrator"):
        more.append(like("organisation_user.invited", role=role))
    for kind in ("rectification", "erasure", "portability", "objection", "restriction"):
        more.append(like("privacy_request.received", kind=kind))
    return more


def renderings() -> list[tuple[str, str, str, c.Event]]:
    cases = []
    for event in variants():
        data = event.model_dump()
        for spec in TABLE.for_event(event.event_type, data):
            for channel in sorted(TABLE.channels_of(spec)):
                for locale in LOCALES:
                    cases.append((spec.template, channel, locale, event))
    return cases


CASES = renderings()


def render(template: str, channel: str, locale: str, event: c.Event, *, table: MessageTable = TABLE) -> Any:
    data = opened(event, RING)
    spec = next(s for s in table.for_event(event.event_type, data) if s.template == template)
    link = spec.link.build(PORTAL, data) if spec.link else None
    context = RENDERER.context(data, locale, link)
    if channel == "sms":
        return RENDERER.sms(template, locale, context, max_segments=spec.sms_segments)
    return RENDERER.email(template, locale, context)


def test_every_message_of_the_table_is_rendered_by_these_cases() -> None:
    rendered = {(t, ch) for t, ch, _, _ in CASES}
    expected = {(spec.template, ch) for spec in TABLE.specs for ch in TABLE.channels_of(spec)}
    assert expected <= rendered


@pytest.mark.parametrize(("template", "channel", "locale", "event"), CASES,
                         ids=[f"{t}.{ch}-{loc}-{i}" for i, (t, ch, loc, _) in enumerate(CASES)])
def test_a_message_renders_completely(template: str, channel: str, locale: str, event: c.Event) -> None:
    message = render(template, channel, locale, event)
    texts = [message.text] if channel == "sms" else [message.subject, message.text, message.html]
    for text in texts:
        assert text.strip()
        assert not LEFTOVER.search(text), f"placeholder or missing value left in: {text[:300]}"


@pytest.mark.parametrize("locale", LOCALES)
def test_every_text_message_fits_the_segments_its_line_allows(locale: str) -> None:
    for template, channel, case_locale, event in CASES:
        if channel != "sms" or case_locale != locale:
            continue
        sms = render(template, channel, locale, event)
        [spec] = [s for s in TABLE.for_event(event.event_type, event.model_dump()) if s.template == template]
        assert segments(sms.text).count <= spec.sms_segments, (template, locale, segments(sms.text), sms.text)


def test_a_text_longer_than_its_lines_cap_is_refused_as_too_long() -> None:
    reminder = next(e for e in example_events() if e.event_type == "appointment.reminder_due")
    long_dealer = c.AppointmentReminderDue.model_validate(reminder.model_dump() | {"dealer": LONG_DEALER.model_dump()})
    assert render("appointment_reminder", "sms", "fr-FR", long_dealer).segments.count == 3
    one_segment = MessageTable(tuple(replace(s, sms_segments=1) if s.template == "appointment_reminder" else s
                                     for s in TABLE.specs))
    with pytest.raises(SmsTooLong) as refused:
        render("appointment_reminder", "sms", "fr-FR", long_dealer, table=one_segment)
    assert (refused.value.segments.count, refused.value.limit) == (3, 1)


@pytest.mark.parametrize("locale", LOCALES)
def test_a_reminder_for_a_dealer_with_a_long_accented_name_still_fits_three_segments(locale: str) -> None:
    reminder = next(e for e in example_events() if e.event_type == "appointment.reminder_due")
    at_besancon = c.AppointmentReminderDue.model_validate(reminder.model_dump() | {"dealer": LONG_DEALER.model_dump()})
    sms = render("appointment_reminder", "sms", locale, at_besancon)
    assert sms.segments.encoding == "UCS-2" and sms.segments.count <= 3, (sms.segments, sms.text)
    assert "Besançon" in sms.text and "147 boulevard François-Mitterrand" in sms.text


@pytest.mark.parametrize("locale", LOCALES)
def test_a_reminder_too_long_for_three_segments_is_refused_as_such_and_its_email_still_renders(locale: str) -> None:
    reminder = next(e for e in example_events() if e.event_type == "appointment.reminder_due")
    longer = LONG_DEALER.model_copy(update={"name": "Garage Côté Beaulieu Automobiles – Véhicules utilitaires",
                                            "address": "Zone d'activités de Châteaufarine, 147 boulevard François-Mitterrand"})
    event = c.AppointmentReminderDue.model_validate(reminder.model_dump() | {"dealer": longer.model_dump()})
    with pytest.raises(SmsTooLong) as refused:
        render("appointment_reminder", "sms", locale, event)
    assert refused.value.segments.count > refused.value.limit == 3
    assert isinstance(refused.value, TemplateError)  # anything that does not know better treats it as one
    email = render("appointment_reminder", "email", locale, event)
    assert "Châteaufarine" in email.text


def test_a_code_sms_with_accents_still_fits_one_gsm_segment() -> None:
    event = next(e for e in example_events() if e.event_type == "customer.device_code_issued")
    sms = render("device_code", "sms", "fr-CA", event)
    assert "123456" in sms.text
    assert sms.segments.encoding == "GSM-7" and sms.segments.count == 1


def test_activation_and_reset_links_are_absolute_and_carry_the_unsealed_token_url_encoded() -> None:
    token = "rec_42.Zx+/=&?"  # characters that must be escaped in a query string
    registered = c.CustomerRegistered.model_validate(
        next(e for e in example_events() if e.event_type == "customer.registered").model_dump()
        | {"activation_token": c.CustomerRegistered.seal(RING, "activation_token", token)}
    )
    reset = c.PasswordResetRequested.model_validate(
        next(e for e in example_events() if e.event_type == "customer.password_reset_requested").model_dump()
        | {"reset_token": c.PasswordResetRequested.seal(RING, "reset_token", token)}
    )
    for event, path in ((registered, "/activate"), (reset, "/reset-password")):
        template = "activation" if path == "/activate" else "password_reset"
        email = render(template, "email", "nl-BE", event)
        links = [u for u in re.findall(r"https?://\S+", email.text) if urlsplit(u).path == path]
        assert links, email.text
        url = urlsplit(links[0])
        assert f"{url.scheme}://{url.netloc}" == PORTAL
        assert parse_qs(url.query) == {"token": [token]}
        assert f'href="{links[0].replace("&", "&amp;")}"' in email.html


# The main link of every email for the example events, written out by hand.
EXPECTED_LINKS: dict[tuple[str, str], str | None] = {
    ("customer.registered", "activation"): f"{PORTAL}/activate?token=tok",
    ("customer.activation_link_reissued", "activation"): f"{PORTAL}/activate?token=t2",
    ("organisation_user.invited", "organisation_invitation"): f"{PORTAL}/activate?token=inv",
    ("customer.already_registered", "already_registered"): f"{PORTAL}/forgot-password",
    ("customer.password_reset_requested", "password_reset"): f"{PORTAL}/reset-password?token=r",
    ("customer.password_changed", "password_changed"): f"{PORTAL}/forgot-password",
    ("customer.account_locked", "account_locked"): f"{PORTAL}/forgot-password",
    ("customer.account_unlocked", "account_unlocked"): f"{PORTAL}/login",
    ("customer.device_code_issued", "device_code"): None,
    ("device.authorised", "new_device"): f"{PORTAL}/security/devices",
    ("customer.access_ended", "access_ended"): None,
    ("customer.access_restored", "access_restored"): f"{PORTAL}/login",
    ("contract.nearing_end", "lease_end_decision"): f"{PORTAL}/contracts/FR-LOA-0042/end-of-lease",
    ("contract.nearing_end", "lease_end_return"): f"{PORTAL}/contracts/FR-LOA-0042/return",
    ("appointment.booked", "appointment_confirmation"): f"{PORTAL}/contracts/FR-LOA-0042/return",
    ("appointment.reminder_due", "appointment_reminder"): None,
    ("appointment.cancelled", "appointment_cancelled"): f"{PORTAL}/contracts/FR-LOA-0042/return",
    ("inspection.completed", "inspection_report"): "https://portal.example.com/inspections/ins_5",
    ("counter_inspection.acknowledged", "counter_inspection"): None,
    ("invoice.issued", "invoice"): "https://portal.example.com/invoices/inv_8",
    ("secure_message.replied", "secure_message_reply"): f"{PORTAL}/messages/thr_9",
    ("terms.acceptance_required", "terms_acceptance_required"): "https://portal.example.com/terms/FR-2026-09/fr-FR",
    ("terms.changed", "terms_changed"): "https://portal.example.com/terms/FR-2027-01/fr-FR",
    ("terms.accepted", "terms_accepted"): "https://portal.example.com/terms/FR-2026-09/fr-FR",
    ("privacy_request.received", "privacy_request_received"): f"{PORTAL}/privacy/requests/prq_1",
    ("privacy_request.completed", "privacy_request_completed"): f"{PORTAL}/privacy/requests/prq_1",
}
EMAIL_CASES = [case for case in CASES if case[1] == "email"]


def test_the_expected_links_cover_every_email_of_the_table() -> None:
    emails = {(spec.event_type, spec.template) for spec in TABLE.specs if "email" in TABLE.channels_of(spec)}
    assert emails == set(EXPECTED_LINKS)


@pytest.mark.parametrize(("template", "channel", "locale", "event"), EMAIL_CASES,
                         ids=[f"{t}-{loc}-{i}" for i, (t, _, loc, _) in enumerate(EMAIL_CASES)])
def test_every_link_of_every_email_is_absolute_https_and_the_right_one(
    template: str, channel: str, locale: str, event: c.Event
) -> None:
    email = render(template, channel, locale, event)
    expected = {EXPECTED_LINKS[(event.event_type, template)], getattr(event, "explanation_url", None)} - {None}
    hrefs = {href.replace("&amp;", "&") for href in re.findall(r'href="([^"]+)"', email.html)}
    in_text = set(re.findall(r"https?://[^\s<>\"']+", email.text))
    assert hrefs == expected and in_text == expected, (hrefs, in_text, expected)
    assert all(urlsplit(u).scheme == "https" and urlsplit(u).hostname for u in hrefs | in_text)


@pytest.mark.parametrize("url", [
    "http://portal.example.com/inspections/ins_5",  # readable by anyone on the way
    "/inspections/ins_5",  # relative: means nothing in a mailbox
    "//evil.example/inspections/ins_5",
    "javascript:alert(document.cookie)",
    "https://portal.example.com@evil.example/ins_5",  # looks like ours, goes elsewhere
    "https://portal.example.com/ins 5",
    'https://portal.example.com/"><script>',
])
def test_a_link_from_an_event_field_that_is_not_absolute_https_is_refused(url: str) -> None:
    inspection = next(e for e in example_events() if e.event_type == "inspection.completed")
    bad = c.InspectionCompleted.model_validate(inspection.model_dump() | {"report_url": url})
    with pytest.raises(UnsafeLink):
        render("inspection_report", "email", "fr-FR", bad)
    completed = next(e for e in example_events() if e.event_type == "privacy_request.completed")
    explained = c.PrivacyRequestCompleted.model_validate(completed.model_dump() | {"explanation_url": url})
    with pytest.raises(TemplateError, match="link"):
        render("privacy_request_completed", "email", "nl-BE", explained)


def test_links_under_the_portal_base_may_be_plain_http_for_a_local_portal() -> None:
    local = "http://127.0.0.1:8000"
    assert checked_link(f"{local}/activate?token=x", local) == f"{local}/activate?token=x"
    with pytest.raises(UnsafeLink):
        checked_link("http://127.0.0.1:8000.evil.example/x", local)
    with pytest.raises(UnsafeLink):
        checked_link("http://elsewhere.example/x", local)


def test_an_address_someone_typed_is_not_made_a_link_in_the_html() -> None:
    replied = next(e for e in example_events() if e.event_type == "secure_message.replied")
    typed = c.SecureMessageReplied.model_validate(replied.model_dump() | {"topic": "see http://evil.example/pay"})
    email = render("secure_message_reply", "email", "en", typed)
    assert "http://evil.example/pay" in email.html and 'href="http://evil.example' not in email.html


def test_regional_wording_overrides_the_language_base() -> None:
    booked = next(e for e in example_events() if e.event_type == "appointment.booked")
    assert "kentekencard" in render("appointment_confirmation", "email", "nl-NL", booked).text
    assert "inschrijvingsbewijs" in render("appointment_confirmation", "email", "nl-BE", booked).text
    assert "carte grise" in render("appointment_confirmation", "email", "fr-FR", booked).text
    assert "carte grise" not in render("appointment_confirmation", "email", "fr-BE", booked).text
    assert "texto" in render("appointment_confirmation", "email", "fr-CA", booked).text
    invoice = next(e for e in example_events() if e.event_type == "invoice.issued")
    france, belgium, quebec = (render("invoice", "email", loc, invoice).text for loc in ("fr-FR", "fr-BE", "fr-CA"))
    assert "Montant HT\u00a0:" in france and "Total TTC\u00a0:" in france
    assert "Montant HTVA\u00a0:" in belgium and "Total TVAC\u00a0:" in belgium and " HT\u00a0" not in belgium
    assert "Montant avant taxes\u00a0:" in quebec and "Total taxes incluses\u00a0:" in quebec and "TVA" not in quebec
    inspection = next(e for e in example_events() if e.event_type == "inspection.completed")
    assert "10 jours ouvrés" in render("inspection_report", "email", "fr-FR", inspection).text
    for locale in ("fr-BE", "fr-CA"):
        assert "10 jours ouvrables" in render("inspection_report", "email", locale, inspection).text
    cancelled = next(e for e in example_events() if e.event_type == "appointment.cancelled")
    cancelled = cancelled.model_copy(update={"reason": "dealer_unavailable", "travel_fee_charged": None})
    assert "Le distributeur n'est plus" in render("appointment_cancelled", "email", "fr-FR", cancelled).text
    quebec_cancel = render("appointment_cancelled", "email", "fr-CA", cancelled).text
    assert "Le concessionnaire n'est plus" in quebec_cancel and "distributeur" not in quebec_cancel


def _all_emails_and_sms(locale: str) -> str:
    texts = []
    for template, channel, case_locale, event in CASES:
        if case_locale == locale:
            message = render(template, channel, locale, event)
            texts += [message.text] if channel == "sms" else [message.subject, message.text]
    return "\n".join(texts).lower()


def test_belgian_dutch_says_aanmelden_and_teruggave_and_dutch_says_inloggen_and_inleveren_throughout() -> None:
    flemish, dutch = _all_emails_and_sms("nl-BE"), _all_emails_and_sms("nl-NL")
    assert "aanmeld" in flemish and "teruggave" in flemish and "terugbrengen" in flemish
    assert "inlog" not in flemish and "inlever" not in flemish
    assert "inlog" in dutch and "inlever" in dutch
    assert "aanmeld" not in dutch and "teruggave" not in dutch, "one word for signing in within nl"


@pytest.mark.parametrize(
    ("locale", "ours", "not_ours"),
    [("fr-FR", "service clients", "service à la clientèle"), ("fr-BE", "service clients", "service à la clientèle"),
     ("fr-CA", "service à la clientèle", "service clients"), ("nl-NL", "klantenservice", "klantendienst"),
     ("nl-BE", "klantendienst", "klantenservice")],
)
def test_the_customer_service_has_one_name_in_each_region_signature_and_texts_alike(
    locale: str, ours: str, not_ours: str
) -> None:
    ended = next(e for e in example_events() if e.event_type == "customer.access_ended")
    text = render("access_ended", "email", locale, ended).text.lower()
    assert text.count(ours) == 2, "the text and the signature"
    assert not_ours not in _all_emails_and_sms(locale)


def test_dutch_speaks_of_the_usual_email_address() -> None:
    restored = next(e for e in example_events() if e.event_type == "customer.access_restored")
    for locale in ("nl-NL", "nl-BE"):
        text = render("access_restored", "email", locale, restored).text
        assert "uw gebruikelijke e-mailadres en wachtwoord" in text and "gewone" not in text


def test_a_deadline_is_written_day_first_then_time() -> None:
    locked = next(e for e in example_events() if e.event_type == "customer.account_locked")  # 09:45 UTC
    reset = next(e for e in example_events() if e.event_type == "customer.password_reset_requested")  # 10:30 UTC
    nbsp = "\u00a0"
    assert f"à partir du dimanche 22 novembre 2026 à 10{nbsp}h{nbsp}45." in render("account_locked", "email", "fr-FR", locked).text
    assert f"jusqu'au dimanche 22 novembre 2026 à 11{nbsp}h{nbsp}30 " in render("password_reset", "email", "fr-BE", reset).text
    assert f"vanaf zondag 22 november 2026 om 10.45{nbsp}uur." in render("account_locked", "email", "nl-NL", locked).text
    assert f"tot zondag 22 november 2026 om 11.30{nbsp}uur " in render("password_reset", "email", "nl-BE", reset).text
    assert "from Sunday 22 November 2026 at 10:45." in render("account_locked", "email", "en", locked).text
    assert "until Sunday 22 November 2026 at 11:30 " in render("password_reset", "email", "en", reset).text


FRENCH_EMAILS = [case for case in EMAIL_CASES if case[2].startswith("fr")]


@pytest.mark.parametrize(("template", "channel", "locale", "event"), FRENCH_EMAILS,
                         ids=[f"{t}-{loc}-{i}" for i, (t, _, loc, _) in enumerate(FRENCH_EMAILS)])
def test_french_punctuation_never_starts_a_line(template: str, channel: str, locale: str, event: c.Event) -> None:
    email = render(template, channel, locale, event)
    for text in (email.subject, email.text, email.html):
        assert not re.search(r" [:;!?»]|« ", text), re.search(r".{30} [:;!?»].{10}|« .{30}", text)
    if " : " in email.text.replace("\u00a0", " "):
        assert "\u00a0:" in email.html


@pytest.mark.parametrize(
    ("locale", "applies", "asks_nothing"),
    [("fr-FR", "la version FR-2027-01 s'applique à compter du vendredi 15 janvier 2027.",
      "Cette modification ne demande pas votre acceptation"),
     ("nl-BE", "versie FR-2027-01 geldt vanaf vrijdag 15 januari 2027.", "Voor deze wijziging is uw aanvaarding niet nodig"),
     ("en", "version FR-2027-01 applies from Friday 15 January 2027.", "This change does not need your acceptance")],
    ids=["fr-FR", "nl-BE", "en"],
)
def test_a_change_of_the_terms_that_needs_no_acceptance_sends_their_full_text_and_asks_for_nothing(
    locale: str, applies: str, asks_nothing: str
) -> None:
    changed = next(e for e in example_events() if e.event_type == "terms.changed")
    email = render("terms_changed", "email", locale, changed)
    assert applies in email.text.replace("\u00a0", " ") and asks_nothing in email.text.replace("\u00a0", " ")
    assert "FR-2027-01" in email.subject
    assert f"\n{changed.document_url}\n" in email.text and f'href="{changed.document_url}"' in email.html


@pytest.mark.parametrize(
    ("locale", "deadline"),
    [("fr-FR", "La contre-expertise doit avoir lieu au plus tard le vendredi 4 décembre 2026, sur le lieu de stockage"),
     ("fr-CA", "La contre-expertise doit avoir lieu au plus tard le vendredi 4 décembre 2026, sur le lieu de stockage"),
     ("nl-NL", "De tegenexpertise moet uiterlijk op vrijdag 4 december 2026 plaatsvinden, op de plaats waar"),
     ("en", "The counter-inspection must take place no later than Friday 4 December 2026, where your vehicle is kept")],
)
def test_a_counter_inspection_request_is_acknowledged_with_its_deadline_and_where_the_car_is_kept(
    locale: str, deadline: str
) -> None:
    acknowledged = next(e for e in example_events() if e.event_type == "counter_inspection.acknowledged")
    email = render("counter_inspection", "email", locale, acknowledged)
    assert deadline in email.text.replace("\u00a0", " ")
    assert "Parc Leaseline Lyon-Est\n8 rue de l'Industrie, 69800 Saint-Priest" in email.text
    assert "FR-LOA-0042" in email.subject


def test_the_english_wording_says_what_it_means() -> None:
    events = {e.event_type: e for e in example_events()}
    decision = render("lease_end_decision", "email", "en", events["contract.nearing_end"])
    assert "Tell us your decision\n" in decision.text
    device = render("new_device", "email", "en", events["device.authorised"])
    assert "you will not be asked for a code on this device again" in device.text
    invoice = render("invoice", "email", "en", events["invoice.issued"])
    assert "On 30 November 2026, we issued a new invoice for your contract FR-LOA-0042." in invoice.text


@pytest.mark.parametrize("locale", [loc for loc in LOCALES if loc != "en"])
def test_no_french_or_dutch_customer_ever_gets_english_wording(locale: str) -> None:
    for template, channel in {(spec.template, ch) for spec in TABLE.specs for ch in TABLE.channels_of(spec)}:
        blocks = ("text",) if channel == "sms" else ("subject", "body") + (("action",) if any(
            s.link for s in TABLE.specs if s.template == template) else ())
        for block in blocks:
            source = RENDERER.source_of(f"{template}.{channel}", block, locale)
            assert source is not None and not source.startswith("en/"), (template, channel, block, locale, source)
    for block in ("greeting", "signature", "footer", "marketing_footer", "unsubscribe", "link_hint"):
        source = RENDERER.source_of("_common", block, locale)
        assert source is not None and not source.startswith("en/")


def test_every_template_file_belongs_to_a_message_of_the_table() -> None:
    known = {f"{spec.template}.{ch}.j2" for spec in TABLE.specs for ch in TABLE.channels_of(spec)}
    known |= {"_common.j2", "_words.j2"}
    files = {p.name for p in TEMPLATES_DIR.glob("*/*.j2")}
    assert files <= known, files - known


def test_money_and_dates_are_written_the_way_each_locale_writes_them() -> None:
    invoice = next(e for e in example_events() if e.event_type == "invoice.issued")
    big = c.InvoiceIssued.model_validate(invoice.model_dump() | {"amount_incl_vat": "1234.56"})
    assert "1\u202f234,56\u00a0€" in render("invoice", "email", "fr-FR", big).text
    assert "€\u00a01.234,56" in render("invoice", "email", "nl-NL", big).text
    assert "€1,234.56" in render("invoice", "email", "en", big).text
    assert "30 décembre 2026" in render("invoice", "email", "fr-BE", big).text
    assert "30 december 2026" in render("invoice", "email", "nl-BE", big).text


def test_times_are_shown_in_the_recipients_zone() -> None:
    code = next(e for e in example_events() if e.event_type == "customer.device_code_issued")  # 09:40 UTC
    assert "10 h 40" in render("device_code", "sms", "fr-FR", code).text  # Paris, winter
    assert "4 h 40" in render("device_code", "sms", "fr-CA", code).text  # Toronto
    assert "10.40 uur" in render("device_code", "sms", "nl-BE", code).text
    assert "10.40 uur" in render("device_code", "sms", "nl-NL", code).text  # Taalunie: a full stop, both countries


def test_html_escapes_what_people_typed_and_the_text_part_keeps_it_verbatim() -> None:
    replied = next(e for e in example_events() if e.event_type == "secure_message.replied")
    hostile = c.SecureMessageReplied.model_validate(
        replied.model_dump() | {"topic": '<script>alert("x")</script>', "first_name": "Anne & <b>Bo</b>"}
    )
    email = render("secure_message_reply", "email", "en", hostile)
    assert "<script>" not in email.html and "&lt;script&gt;" in email.html
    assert "<b>Bo</b>" not in email.html and "Anne &amp; &lt;b&gt;Bo&lt;/b&gt;" in email.html
    assert '<script>alert("x")</script>' in email.text


def test_a_missing_value_is_an_error_not_a_blank() -> None:
    with pytest.raises(TemplateError):
        RENDERER.email("activation", "fr-FR", {"locale": "fr-FR", "zone": None, "words": RENDERER.words("fr-FR"),
                                                "link": "https://x", "portal_url": PORTAL})


def test_the_email_is_multipart_with_the_headers_mail_systems_expect() -> None:
    event = next(e for e in example_events() if e.event_type == "customer.registered")
    content = render("activation", "email", "fr-FR", event)
    sent_at = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
    raw = build_email(delivery_id="ntf_abc", sender=Sender.parse("Leaseline <no-reply@leaseline.example>"),
                      to_address="jeanne.martin@example.fr", to_name="Jeanne", subject=content.subject,
                      text=content.text, html=content.html, date=sent_at, language="fr-FR")
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert message["Message-ID"] == "<ntf_abc@leaseline.example>"
    assert message["Date"].datetime == sent_at
    assert message["From"].addresses[0].addr_spec == "no-reply@leaseline.example"
    assert message["To"].addresses[0].addr_spec == "jeanne.martin@example.fr"
    assert str(message["Subject"]) == "Activez votre compte Leaseline"
    assert message["List-Unsubscribe"] is None and message["Auto-Submitted"] == "auto-generated"
    assert message.get_content_type() == "multipart/alternative"
    assert message.get_body(("plain",)).get_content() == content.text
    assert message.get_body(("html",)).get_content() == content.html
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))


def test_a_non_ascii_subject_is_encoded_and_a_marketing_email_offers_to_unsubscribe() -> None:
    raw = build_email(delivery_id="ntf_m", sender=Sender.parse("Leaseline <news@leaseline.example>"),
                      to_address="a@example.be", to_name="Zoë\r\nBcc: evil@example.com", subject="Déjà vu – été",
                      text="t", html="<p>h</p>", date=datetime(2026, 1, 1, tzinfo=UTC), language="nl-BE",
                      unsubscribe_url="https://portal.leaseline.example/preferences/communications?channel=email")
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")  # headers are 7-bit clean
    assert "Subject: =?utf-8?" in head
    assert not any(line.startswith("Bcc") for line in head.split("\r\n")), "a line break reached a header"
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert str(message["Subject"]) == "Déjà vu – été"
    assert message["List-Unsubscribe"] == "<https://portal.leaseline.example/preferences/communications?channel=email>"
    assert message["Auto-Submitted"] is None


@pytest.mark.parametrize("subject", [
    "Votre rendez-vous de restitution est confirmé pour le jeudi 3 décembre à 9 h 30, agence de Lyon-Vénissieux",
    "€" * 40,
    ("Ihr Termin 🚗 " * 12).strip(),
    "é",
    "A plain ASCII subject that is far too long to fit on the first line of a header, so it is folded",
])
def test_a_subject_of_any_length_and_script_survives_the_trip(subject: str) -> None:
    raw = build_email(delivery_id="ntf_s", sender=Sender.parse("Leaseline <no-reply@leaseline.example>"),
                      to_address="a@example.fr", to_name="Anna", subject=subject, text="t", html="<p>h</p>",
                      date=datetime(2026, 12, 3, 10, 30, tzinfo=ZoneInfo("Europe/Paris")), language="fr-FR")
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    subject_lines = re.search(r"^Subject: .*?\r\n(?! )", head, re.S | re.M).group(0).split("\r\n")[:-1]
    assert all(len(line) <= 78 for line in subject_lines), head  # RFC 5322 2.1.1
    assert all(len(word) <= 75 for word in re.findall(r"=\?utf-8\?b\?[^?]*\?=", head))
    message = BytesParser(policy=policy.default).parsebytes(raw)
    assert str(message["Subject"]) == subject
    assert message["Date"].datetime == datetime(2026, 12, 3, 9, 30, tzinfo=UTC)
    assert "Date: Thu, 03 Dec 2026 09:30:00 +0000" in head


def test_a_relative_portal_base_is_refused_at_start() -> None:
    from pydantic import ValidationError

    from services.notifications.settings import NotificationSettings

    for base in ("portal.leaseline.example", "/portal", "ftp://portal.leaseline.example", "https://"):
        with pytest.raises(ValidationError, match="PORTAL_BASE_URL"):
            NotificationSettings(portal_base_url=base)
    assert NotificationSettings(portal_base_url="https://portal.leaseline.example/").portal_base_url == PORTAL
