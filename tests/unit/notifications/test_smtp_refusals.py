"""SMTP refusals sorted without a server: the recipient's for good, later, or our own setup's."""

from __future__ import annotations

import pytest
from aiosmtplib import (
    SMTPAuthenticationError,
    SMTPConnectResponseError,
    SMTPDataError,
    SMTPHeloError,
    SMTPRecipientRefused,
    SMTPRecipientsRefused,
    SMTPResponseException,
    SMTPSenderRefused,
)

from services.notifications.adapters.smtp import classify
from services.notifications.domain.retries import PermanentFailure, ProviderMisconfigured, TransientFailure

SENDER = "no-reply@leaseline.example"
JEANNE = "jeanne.martin@example.fr"


@pytest.mark.parametrize(
    "refusal",
    [
        SMTPSenderRefused(553, "5.7.1 <no-reply@leaseline.example>: Sender address rejected: not owned by user", SENDER),
        SMTPSenderRefused(530, "5.7.0 Authentication required", SENDER),
        SMTPSenderRefused(550, "5.1.8 Sender domain does not exist", SENDER),
        SMTPRecipientRefused(554, "5.7.1 <jeanne.martin@example.fr>: Relay access denied", JEANNE),
        SMTPRecipientRefused(550, "5.7.1 Relaying denied. Proper authentication required.", JEANNE),
        SMTPRecipientRefused(550, "5.7.54 SMTP; Unable to relay recipient in non-accepted domain", JEANNE),
        SMTPRecipientRefused(530, "5.7.0 Must issue a STARTTLS command first", JEANNE),
        SMTPRecipientRefused(550, "relay not permitted", JEANNE),
        SMTPDataError(550, "5.7.26 Unauthenticated email from leaseline.example is not accepted due to DMARC policy"),
        SMTPHeloError(554, "5.7.1 Client host rejected: your address is listed"),
        SMTPConnectResponseError(554, "5.7.1 No SMTP service for you here"),
        SMTPAuthenticationError(535, "5.7.8 Authentication credentials invalid"),
        SMTPResponseException(530, "5.7.0 Must issue a STARTTLS command first"),
    ],
    ids=lambda e: f"{type(e).__name__}-{e.code}-{e.message[:24]}",
)
def test_refusals_caused_by_our_own_setup_are_retried_and_never_the_recipients_fault(
    refusal: SMTPResponseException,
) -> None:
    failure = classify(refusal)
    assert isinstance(failure, ProviderMisconfigured) and isinstance(failure, TransientFailure)
    assert failure.code == str(refusal.code) and "not the recipient" in failure.reason
    assert str(refusal.code) in failure.reason


@pytest.mark.parametrize(
    "refusal",
    [
        SMTPRecipientRefused(550, "5.1.1 <jeanne.martin@example.fr>: Recipient address rejected: User unknown", JEANNE),
        SMTPRecipientRefused(550, "5.1.1 No such user (relayed by mx2.example.fr)", JEANNE),
        SMTPRecipientRefused(550, "5.7.1 Recipient address rejected: Access denied", JEANNE),
        SMTPRecipientRefused(553, "5.1.3 Invalid recipient address syntax", JEANNE),
        SMTPDataError(554, "5.7.1 Message rejected as spam"),
        SMTPDataError(552, "5.3.4 Message size exceeds fixed limit"),
    ],
    ids=lambda e: f"{type(e).__name__}-{e.code}-{e.message[:24]}",
)
def test_refusals_of_the_recipient_or_the_message_stay_permanent(refusal: SMTPResponseException) -> None:
    failure = classify(refusal)
    assert isinstance(failure, PermanentFailure) and failure.code == str(refusal.code)


@pytest.mark.parametrize(
    "refusal",
    [
        SMTPSenderRefused(451, "4.3.0 Temporary lookup failure", SENDER),
        SMTPRecipientRefused(450, "4.2.0 Greylisted, try again later", JEANNE),
        SMTPDataError(421, "4.4.2 Timeout"),
    ],
)
def test_temporary_refusals_are_retried_as_ordinary_transient_failures(refusal: SMTPResponseException) -> None:
    failure = classify(refusal)
    assert type(failure) is TransientFailure


def test_of_several_refused_recipients_one_refused_for_our_setup_makes_it_ours() -> None:
    unknown = SMTPRecipientRefused(550, "5.1.1 User unknown", JEANNE)
    relay = SMTPRecipientRefused(554, "5.7.1 Relay access denied", "bruno@example.be")
    assert isinstance(classify(SMTPRecipientsRefused([unknown, relay])), ProviderMisconfigured)
    both_unknown = classify(SMTPRecipientsRefused([unknown, SMTPRecipientRefused(550, "5.1.1 Nope", "b@example.be")]))
    assert isinstance(both_unknown, PermanentFailure) and both_unknown.reason.startswith("recipient refused: 550")
