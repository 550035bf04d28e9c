"""The catalogue: every integration event Leaseline's services exchange, version 1.

One Kafka topic per event type, named after it; the subject (Kafka key) is the aggregate id named by
``subject_field``. Events that lead to a message for a person carry what notifications needs to
send it (address, locale, name), so it never has to call anyone. Secrets are ``Sealed``.

Naming: ``<subject>.<past tense>``. Adding an optional field is compatible; anything else is a new
class with ``schema_version = 2`` published alongside, until every consumer has moved.
"""

from __future__ import annotations

import functools
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema
from pydantic.networks import validate_email

from shared.events.envelope import Event, Sealed


@functools.lru_cache(maxsize=16384)
def _checked_email(value: str) -> str:
    # pydantic's EmailStr check (email-validator), remembered: 40 µs an address, and the same
    # addresses come back in event after event.
    return validate_email(value)[1]


#: An email address, checked as pydantic's EmailStr checks it (``format: email`` in the schemas).
EmailStr = Annotated[str, AfterValidator(_checked_email), WithJsonSchema({"type": "string", "format": "email"})]

Locale = Literal["fr-FR", "fr-CA", "fr-BE", "nl-BE", "nl-NL", "en"]
Market = Literal["FR", "CA", "BE", "NL"]
E164 = Annotated[str, Field(pattern=r"^\+[1-9][0-9]{6,14}$", description="Phone number in E.164 form")]
Vin = Annotated[str, Field(pattern=r"^[A-HJ-NPR-Z0-9]{17}$", description="17 characters, never I, O or Q")]
Money = Annotated[Decimal, Field(max_digits=14, decimal_places=2)]
Channel = Literal["email", "sms"]
CustomerId = Annotated[str, Field(min_length=1, max_length=64)]


class AddressedEvent(Event):
    """Base of the events that lead to a message for a person: where and how to reach them."""

    email: EmailStr
    locale: Locale
    first_name: str = Field(min_length=1, max_length=100)


# --- identity -----------------------------------------------------------------------------------


class CustomerRegistered(AddressedEvent):
    """A person registered; the account waits for activation through the sealed link token."""

    event_type = "customer.registered"
    subject_field = "customer_id"
    customer_id: CustomerId
    last_name: str = Field(min_length=1, max_length=100)
    mobile: E164 | None = None
    terms_version: str = Field(min_length=1)
    activation_token: Sealed
    activation_expires_at: AwareDatetime


class CustomerAlreadyRegistered(AddressedEvent):
    """Someone registered with an email that already has an account: tell its owner, not the caller."""

    event_type = "customer.already_registered"
    subject_field = "customer_id"
    customer_id: CustomerId


class ActivationLinkReissued(AddressedEvent):
    event_type = "customer.activation_link_reissued"
    subject_field = "customer_id"
    customer_id: CustomerId
    activation_token: Sealed
    activation_expires_at: AwareDatetime


class CustomerActivated(Event):
    event_type = "customer.activated"
    subject_field = "customer_id"
    customer_id: CustomerId


class CustomerDetailsChanged(Event):
    """Contact details as they now stand (a full snapshot, so a reader can simply overwrite)."""

    event_type = "customer.details_changed"
    subject_field = "customer_id"
    customer_id: CustomerId
    email: EmailStr
    first_name: str
    last_name: str
    locale: Locale
    mobile: E164 | None = None


class PasswordResetRequested(AddressedEvent):
    event_type = "customer.password_reset_requested"
    subject_field = "customer_id"
    customer_id: CustomerId
    reset_token: Sealed
    reset_expires_at: AwareDatetime


class PasswordChanged(AddressedEvent):
    event_type = "customer.password_changed"
    subject_field = "customer_id"
    customer_id: CustomerId
    reason: Literal["changed", "reset", "forced_change"]


class AccountLocked(AddressedEvent):
    event_type = "customer.account_locked"
    subject_field = "customer_id"
    customer_id: CustomerId
    locked_until: AwareDatetime | None = Field(description="None: locked until an administrator lifts it")
    failed_attempts: int = Field(ge=1)


class AccountUnlocked(AddressedEvent):
    event_type = "customer.account_unlocked"
    subject_field = "customer_id"
    customer_id: CustomerId
    unlocked_by: str = Field(description="Administrator's account id, or 'lock-expiry'")


class DeviceCodeIssued(AddressedEvent):
    """A 6-digit code to authorise a device, sent on the channel the customer chose."""

    event_type = "customer.device_code_issued"
    subject_field = "customer_id"
    customer_id: CustomerId
    device_id: str
    channel: Channel
    mobile: E164 | None = None
    code: Sealed
    code_expires_at: AwareDatetime


class DeviceAuthorised(AddressedEvent):
    event_type = "device.authorised"
    subject_field = "customer_id"
    customer_id: CustomerId
    device_id: str
    device_label: str = Field(max_length=200)
    remembered: bool


class RegistrationCodeIssued(Event):
    """Belgian-style start: a code by SMS to the mobile on file for a customer number."""

    event_type = "customer.registration_code_issued"
    subject_field = "customer_number"
    customer_number: str
    mobile: E164
    locale: Locale
    code: Sealed
    code_expires_at: AwareDatetime


class CustomerAccessEnded(AddressedEvent):
    event_type = "customer.access_ended"
    subject_field = "customer_id"
    customer_id: CustomerId
    reason: Literal["no_running_contract", "terms_rejected", "closed_by_administrator"]


class CustomerAccessRestored(AddressedEvent):
    """A customer whose access had ended has a running contract again: the portal is open to them
    once more (they sign in anew: sessions ended with the access stay ended)."""

    event_type = "customer.access_restored"
    subject_field = "customer_id"
    customer_id: CustomerId
    contract_number: str | None = Field(
        default=None, description="The running contract that gave access back (None: not known here yet)"
    )


class OrganisationUserInvited(AddressedEvent):
    """A user administrator (or the service desk) created a colleague's account: the sealed link lets
    the colleague choose a password and activate it."""

    event_type = "organisation_user.invited"
    subject_field = "user_id"
    user_id: CustomerId
    organisation_id: str
    organisation_name: str
    role: Literal["adviser", "garage", "salesperson", "administrator"]
    activation_token: Sealed
    activation_expires_at: AwareDatetime


class ContractLinkRequested(Event):
    """A customer asks to link their login to a contract; contracts checks and answers."""

    event_type = "contract.link_requested"
    subject_field = "customer_id"
    customer_id: CustomerId
    method: Literal["vehicle", "customer_number"]
    first_name: str | None = None
    last_name: str | None = None
    vin: Vin | None = None
    last_payment_amount: Money | None = None
    customer_number: str | None = None


# --- contracts ----------------------------------------------------------------------------------


class ContractOpened(Event):
    event_type = "contract.opened"
    subject_field = "contract_number"
    contract_number: str
    customer_number: str
    holder_first_name: str
    holder_last_name: str
    product: Literal["lease", "loan"]
    market: Market
    currency: Literal["EUR", "CAD"]
    start_date: date
    end_date: date
    vin: Vin
    vehicle_model: str
    plate: str | None = None
    mobile_on_file: E164 | None = None
    email_on_file: EmailStr | None = None


class ContractLinkVerified(Event):
    event_type = "contract.link_verified"
    subject_field = "customer_id"
    customer_id: CustomerId
    customer_number: str
    contract_numbers: list[str] = Field(min_length=1)


class ContractLinkRejected(Event):
    event_type = "contract.link_rejected"
    subject_field = "customer_id"
    customer_id: CustomerId
    reason: Literal["no_match", "no_running_contract", "too_many_attempts"]


class ContractNearingEnd(AddressedEvent):
    event_type = "contract.nearing_end"
    subject_field = "contract_number"
    contract_number: str
    customer_id: CustomerId
    milestone: Literal["decision_6_months", "return_3_weeks"]
    end_date: date
    vehicle_model: str
    plate: str | None = None


class ContractClosed(Event):
    event_type = "contract.closed"
    subject_field = "contract_number"
    contract_number: str
    customer_number: str
    closed_on: date
    reason: Literal["ended", "bought_out", "terminated_early"]
    customer_has_running_contract: bool = Field(
        description="Whether the customer still has another running lease or finance contract"
    )


class SecureMessageReplied(AddressedEvent):
    event_type = "secure_message.replied"
    subject_field = "customer_id"
    customer_id: CustomerId
    thread_id: str
    topic: str = Field(description="The subject the customer picked for the thread")
    contract_number: str


# --- restitution --------------------------------------------------------------------------------


class Dealer(BaseModel):
    """Where the car is returned."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    address: str
    city: str
    postcode: str


class AppointmentBooked(AddressedEvent):
    event_type = "appointment.booked"
    subject_field = "contract_number"
    appointment_id: str
    contract_number: str
    customer_id: CustomerId
    mobile: E164 | None = None
    dealer: Dealer
    starts_at: AwareDatetime
    time_zone: str = Field(description="IANA zone of the dealer, e.g. Europe/Paris")
    booked_by: Literal["customer", "call_centre"]


class AppointmentCancelled(AddressedEvent):
    event_type = "appointment.cancelled"
    subject_field = "contract_number"
    appointment_id: str
    contract_number: str
    customer_id: CustomerId
    reason: Literal["customer_request", "missing_documents_or_key", "dealer_unavailable"]
    travel_fee_charged: Money | None = Field(default=None, description="EUR excl. VAT, when documents or key were missing")


class AppointmentReminderDue(AddressedEvent):
    """The day before a return appointment: the SMS reminder."""

    event_type = "appointment.reminder_due"
    subject_field = "contract_number"
    appointment_id: str
    contract_number: str
    customer_id: CustomerId
    mobile: E164 | None = None
    dealer: Dealer
    starts_at: AwareDatetime
    time_zone: str


class InspectionCompleted(AddressedEvent):
    event_type = "inspection.completed"
    subject_field = "contract_number"
    inspection_id: str
    contract_number: str
    customer_id: CustomerId
    completed_at: AwareDatetime
    mileage_km: int = Field(ge=0)
    signed_by_customer: bool
    report_url: str
    repair_charges_excl_vat: Money
    excess_mileage_charge_excl_vat: Money
    currency: Literal["EUR", "CAD"]
    tariff_version: str
    counter_inspection_deadline: date


class CounterInspectionRequested(Event):
    event_type = "counter_inspection.requested"
    subject_field = "contract_number"
    inspection_id: str
    contract_number: str
    customer_id: CustomerId
    notified_at: AwareDatetime
    must_take_place_by: date


class StorageSite(BaseModel):
    """Where a returned car is kept until it leaves the company's hands."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str
    address: str
    city: str
    postcode: str


class CounterInspectionAcknowledged(AddressedEvent, CounterInspectionRequested):
    """The company has recorded a customer's request for a counter-inspection: the customer is told
    by when it must take place and where the car is kept (``counter_inspection.requested`` is the
    same fact for other services, without an address)."""

    event_type = "counter_inspection.acknowledged"
    storage_site: StorageSite


class InvoiceIssued(AddressedEvent):
    event_type = "invoice.issued"
    subject_field = "contract_number"
    invoice_id: str
    contract_number: str
    customer_id: CustomerId
    issued_on: date
    due_on: date
    amount_excl_vat: Money
    vat: Money
    amount_incl_vat: Money
    currency: Literal["EUR", "CAD"]
    document_url: str


# --- consent ------------------------------------------------------------------------------------


class TermsPublished(Event):
    event_type = "terms.published"
    subject_field = "terms_version"
    terms_version: str
    market: Market
    effective_at: AwareDatetime
    document_urls: dict[str, str] = Field(description="Full text per locale")
    requires_acceptance: bool


class TermsAcceptanceRequired(AddressedEvent):
    """A customer must accept a new version before using the portal again (full text linked)."""

    event_type = "terms.acceptance_required"
    subject_field = "customer_id"
    customer_id: CustomerId
    terms_version: str
    document_url: str


class TermsChanged(AddressedEvent):
    """A new version of the terms applies to a customer without needing their acceptance: they get a
    copy of its full text. Published once per customer concerned; a version that must be accepted
    leads to ``terms.acceptance_required`` instead."""

    event_type = "terms.changed"
    subject_field = "customer_id"
    customer_id: CustomerId
    terms_version: str
    document_url: str = Field(description="Absolute https address of this version's full text, in the customer's language")
    effective_at: AwareDatetime


class TermsAccepted(AddressedEvent):
    event_type = "terms.accepted"
    subject_field = "customer_id"
    customer_id: CustomerId
    terms_version: str
    accepted_at: AwareDatetime
    how: Literal["registration", "portal", "app"]
    document_url: str


class TermsRejected(Event):
    event_type = "terms.rejected"
    subject_field = "customer_id"
    customer_id: CustomerId
    terms_version: str


Purpose = Literal["marketing", "connected_car_data", "app_analytics"]
ConsentChannel = Literal["email", "sms", "phone", "post", "push", "any"]


class ConsentGiven(Event):
    event_type = "consent.given"
    subject_field = "customer_id"
    customer_id: CustomerId
    purpose: Purpose
    channel: ConsentChannel
    given_at: AwareDatetime
    proof: str = Field(description="How it was given: form id, wording version, IP-less reference")


class ConsentWithdrawn(Event):
    event_type = "consent.withdrawn"
    subject_field = "customer_id"
    customer_id: CustomerId
    purpose: Purpose
    channel: ConsentChannel
    withdrawn_at: AwareDatetime


PrivacyRequestKind = Literal["access", "rectification", "erasure", "portability", "objection", "restriction"]


class PrivacyRequestReceived(AddressedEvent):
    event_type = "privacy_request.received"
    subject_field = "customer_id"
    request_id: str
    customer_id: CustomerId
    kind: PrivacyRequestKind
    due_on: date


class PrivacyRequestCompleted(AddressedEvent):
    event_type = "privacy_request.completed"
    subject_field = "customer_id"
    request_id: str
    customer_id: CustomerId
    kind: PrivacyRequestKind
    outcome: Literal["fulfilled", "partially_fulfilled", "refused"]
    explanation_url: str | None = None


# --- notifications ------------------------------------------------------------------------------


class NotificationSent(Event):
    event_type = "notification.sent"
    subject_field = "notification_id"
    notification_id: str
    source_event_id: str
    source_event_type: str
    customer_id: str | None = None
    channel: Channel
    template: str
    provider_message_id: str | None = None
    sent_at: AwareDatetime
    attempts: int | None = Field(default=None, ge=1, description="Attempts it took, this one included")


class NotificationFailed(Event):
    event_type = "notification.failed"
    subject_field = "notification_id"
    notification_id: str
    source_event_id: str
    source_event_type: str
    customer_id: str | None = None
    channel: Channel
    template: str
    reason: str
    permanent: bool
    failed_at: AwareDatetime
    attempts: int | None = Field(default=None, ge=1, description="Attempts made before giving up")
    fallback_notification_id: str | None = Field(
        default=None, description="The notification carrying the same message on another channel, if any"
    )


EVENT_CLASSES: tuple[type[Event], ...] = (
    CustomerRegistered,
    CustomerAlreadyRegistered,
    ActivationLinkReissued,
    CustomerActivated,
    CustomerDetailsChanged,
    PasswordResetRequested,
    PasswordChanged,
    AccountLocked,
    AccountUnlocked,
    DeviceCodeIssued,
    DeviceAuthorised,
    RegistrationCodeIssued,
    CustomerAccessEnded,
    CustomerAccessRestored,
    OrganisationUserInvited,
    ContractLinkRequested,
    ContractOpened,
    ContractLinkVerified,
    ContractLinkRejected,
    ContractNearingEnd,
    ContractClosed,
    SecureMessageReplied,
    AppointmentBooked,
    AppointmentCancelled,
    AppointmentReminderDue,
    InspectionCompleted,
    CounterInspectionRequested,
    CounterInspectionAcknowledged,
    InvoiceIssued,
    TermsPublished,
    TermsAcceptanceRequired,
    TermsChanged,
    TermsAccepted,
    TermsRejected,
    ConsentGiven,
    ConsentWithdrawn,
    PrivacyRequestReceived,
    PrivacyRequestCompleted,
    NotificationSent,
    NotificationFailed,
)

