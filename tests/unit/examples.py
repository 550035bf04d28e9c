"""One realistic example of every catalogue event (also used by other test suites)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

from shared.crypto import Keyring
from shared.events import catalogue as c

AT = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)
RING = Keyring.parse("examples:" + "A" * 43)
JEANNE = {"email": "jeanne.martin@example.fr", "locale": "fr-FR", "first_name": "Jeanne"}
DEALER = c.Dealer(name="Garage du Parc", address="12 rue des Lilas", city="Lyon", postcode="69003")
# Accents outside GSM-7 (ô, ç) turn a whole SMS to UCS-2: 67 characters a segment instead of 153.
LONG_DEALER = c.Dealer(name="Garage Côté Beaulieu Automobiles", address="147 boulevard François-Mitterrand",
                       city="Besançon", postcode="25000")


def example_events() -> list[c.Event]:
    return [
        c.CustomerRegistered(
            customer_id="cus_jeanne", last_name="Martin", mobile="+33612345678", terms_version="FR-2026-09",
            activation_token=c.CustomerRegistered.seal(RING, "activation_token", "tok"),
            activation_expires_at=AT + timedelta(hours=72), **JEANNE,
        ),
        c.CustomerAlreadyRegistered(customer_id="cus_jeanne", **JEANNE),
        c.ActivationLinkReissued(
            customer_id="cus_jeanne", activation_token=c.ActivationLinkReissued.seal(RING, "activation_token", "t2"),
            activation_expires_at=AT + timedelta(hours=72), **JEANNE,
        ),
        c.CustomerActivated(customer_id="cus_jeanne"),
        c.CustomerDetailsChanged(
            customer_id="cus_jeanne", email="jeanne.martin@example.fr", first_name="Jeanne", last_name="Martin",
            locale="fr-FR", mobile="+33612345678",
        ),
        c.PasswordResetRequested(
            customer_id="cus_jeanne", reset_token=c.PasswordResetRequested.seal(RING, "reset_token", "r"),
            reset_expires_at=AT + timedelta(hours=1), **JEANNE,
        ),
        c.PasswordChanged(customer_id="cus_jeanne", reason="reset", **JEANNE),
        c.AccountLocked(customer_id="cus_jeanne", locked_until=AT + timedelta(minutes=15), failed_attempts=5, **JEANNE),
        c.AccountUnlocked(customer_id="cus_jeanne", unlocked_by="lock-expiry", **JEANNE),
        c.DeviceCodeIssued(
            customer_id="cus_jeanne", device_id="dev_1", channel="sms", mobile="+33612345678",
            code=c.DeviceCodeIssued.seal(RING, "code", "123456"), code_expires_at=AT + timedelta(minutes=10), **JEANNE,
        ),
        c.DeviceAuthorised(customer_id="cus_jeanne", device_id="dev_1", device_label="Firefox on Linux", remembered=True, **JEANNE),
        c.RegistrationCodeIssued(
            customer_number="BE-100234", mobile="+32470123456", locale="nl-BE",
            code=c.RegistrationCodeIssued.seal(RING, "code", "654321"), code_expires_at=AT + timedelta(minutes=10),
        ),
        c.CustomerAccessEnded(customer_id="cus_jeanne", reason="no_running_contract", **JEANNE),
        c.CustomerAccessRestored(customer_id="cus_jeanne", contract_number="FR-2026-004512", **JEANNE),
        c.OrganisationUserInvited(
            user_id="usr_pieter", email="pieter.devries@example.nl", locale="nl-NL", first_name="Pieter",
            organisation_id="org_garage_west", organisation_name="Garage West", role="adviser",
            activation_token=c.OrganisationUserInvited.seal(RING, "activation_token", "inv"),
            activation_expires_at=AT + timedelta(hours=72),
        ),
        c.ContractLinkRequested(
            customer_id="cus_jeanne", method="vehicle", first_name="Jeanne", last_name="Martin",
            vin="VF1RFB00067123456", last_payment_amount=Decimal("389.90"),
        ),
        c.ContractOpened(
            contract_number="FR-LOA-0042", customer_number="FR-778899", holder_first_name="Jeanne",
            holder_last_name="Martin", product="lease", market="FR", currency="EUR", start_date=date(2023, 1, 15),
            end_date=date(2027, 1, 14), vin="VF1RFB00067123456", vehicle_model="Megane E-Tech", plate="GH-123-JK",
            mobile_on_file="+33612345678", email_on_file="jeanne.martin@example.fr",
        ),
        c.ContractLinkVerified(customer_id="cus_jeanne", customer_number="FR-778899", contract_numbers=["FR-LOA-0042"]),
        c.ContractLinkRejected(customer_id="cus_jeanne", reason="no_match"),
        c.ContractNearingEnd(
            contract_number="FR-LOA-0042", customer_id="cus_jeanne", milestone="decision_6_months",
            end_date=date(2027, 1, 14), vehicle_model="Megane E-Tech", plate="GH-123-JK", **JEANNE,
        ),
        c.ContractClosed(
            contract_number="FR-LOA-0042", customer_number="FR-778899", closed_on=date(2027, 1, 14), reason="ended",
            customer_has_running_contract=False,
        ),
        c.SecureMessageReplied(
            customer_id="cus_jeanne", thread_id="thr_9", topic="Payoff quote", contract_number="FR-LOA-0042", **JEANNE,
        ),
        c.AppointmentBooked(
            appointment_id="apt_3", contract_number="FR-LOA-0042", customer_id="cus_jeanne", mobile="+33612345678",
            dealer=DEALER, starts_at=AT + timedelta(days=20), time_zone="Europe/Paris", booked_by="call_centre", **JEANNE,
        ),
        c.AppointmentCancelled(
            appointment_id="apt_3", contract_number="FR-LOA-0042", customer_id="cus_jeanne",
            reason="missing_documents_or_key", travel_fee_charged=Decimal("50.00"), **JEANNE,
        ),
        c.AppointmentReminderDue(
            appointment_id="apt_3", contract_number="FR-LOA-0042", customer_id="cus_jeanne", mobile="+33612345678",
            dealer=DEALER, starts_at=AT + timedelta(days=1), time_zone="Europe/Paris", **JEANNE,
        ),
        c.InspectionCompleted(
            inspection_id="ins_5", contract_number="FR-LOA-0042", customer_id="cus_jeanne", completed_at=AT,
            mileage_km=61250, signed_by_customer=True, report_url="https://portal.example.com/inspections/ins_5",
            repair_charges_excl_vat=Decimal("239.00"), excess_mileage_charge_excl_vat=Decimal("0.00"), currency="EUR",
            tariff_version="FR-2026-01", counter_inspection_deadline=date(2026, 11, 25), **JEANNE,
        ),
        c.CounterInspectionRequested(
            inspection_id="ins_5", contract_number="FR-LOA-0042", customer_id="cus_jeanne", notified_at=AT,
            must_take_place_by=date(2026, 12, 4),
        ),
        c.CounterInspectionAcknowledged(
            inspection_id="ins_5", contract_number="FR-LOA-0042", customer_id="cus_jeanne", notified_at=AT,
            must_take_place_by=date(2026, 12, 4),
            storage_site=c.StorageSite(name="Parc Leaseline Lyon-Est", address="8 rue de l'Industrie", city="Saint-Priest",
                                       postcode="69800"),
            **JEANNE,
        ),
        c.InvoiceIssued(
            invoice_id="inv_8", contract_number="FR-LOA-0042", customer_id="cus_jeanne", issued_on=date(2026, 11, 30),
            due_on=date(2026, 12, 30), amount_excl_vat=Decimal("239.00"), vat=Decimal("47.80"),
            amount_incl_vat=Decimal("286.80"), currency="EUR", document_url="https://portal.example.com/invoices/inv_8",
            **JEANNE,
        ),
        c.TermsPublished(
            terms_version="FR-2026-09", market="FR", effective_at=AT, requires_acceptance=True,
            document_urls={"fr-FR": "https://portal.example.com/terms/FR-2026-09/fr-FR"},
        ),
        c.TermsAcceptanceRequired(
            customer_id="cus_jeanne", terms_version="FR-2026-09",
            document_url="https://portal.example.com/terms/FR-2026-09/fr-FR", **JEANNE,
        ),
        c.TermsChanged(
            customer_id="cus_jeanne", terms_version="FR-2027-01",
            effective_at=datetime(2027, 1, 14, 23, 0, tzinfo=UTC),  # midnight in Paris
            document_url="https://portal.example.com/terms/FR-2027-01/fr-FR", **JEANNE,
        ),
        c.TermsAccepted(
            customer_id="cus_jeanne", terms_version="FR-2026-09", accepted_at=AT, how="registration",
            document_url="https://portal.example.com/terms/FR-2026-09/fr-FR", **JEANNE,
        ),
        c.TermsRejected(customer_id="cus_jeanne", terms_version="FR-2026-09"),
        c.ConsentGiven(customer_id="cus_jeanne", purpose="marketing", channel="email", given_at=AT, proof="form:newsletter-v3"),
        c.ConsentWithdrawn(customer_id="cus_jeanne", purpose="marketing", channel="email", withdrawn_at=AT),
        c.PrivacyRequestReceived(
            request_id="prq_1", customer_id="cus_jeanne", kind="access", due_on=date(2026, 12, 22), **JEANNE,
        ),
        c.PrivacyRequestCompleted(request_id="prq_1", customer_id="cus_jeanne", kind="access", outcome="fulfilled", **JEANNE),
        c.NotificationSent(
            notification_id="ntf_1", source_event_id="evt_1", source_event_type="customer.registered",
            customer_id="cus_jeanne", channel="email", template="activation", provider_message_id="<m1@leaseline>",
            sent_at=AT, attempts=1,
        ),
        c.NotificationFailed(
            notification_id="ntf_2", source_event_id="evt_2", source_event_type="customer.device_code_issued",
            customer_id="cus_jeanne", channel="sms", template="device_code", reason="21211 invalid number",
            permanent=True, failed_at=AT, attempts=1, fallback_notification_id="ntf_3",
        ),
    ]
