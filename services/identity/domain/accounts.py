"""What an account is allowed to do, decided from its state alone."""

from __future__ import annotations

from datetime import datetime

from services.identity.domain.errors import Refusal

CUSTOMER, ORG_USER, STAFF = "customer", "org_user", "staff"
PENDING, ACTIVE, DISABLED, ACCESS_ENDED = "pending_activation", "active", "disabled", "access_ended"
ORG_ROLES = ("adviser", "garage", "salesperson", "administrator")
STAFF_ROLES = ("service_desk", "security_administrator")
ORG_KINDS = ("intermediary", "garage", "dealership")


def refusal_for_status(state: dict) -> Refusal | None:
    """Why an account whose password was just proven may still not sign in (None: it may)."""
    status = state["status"]
    if status == PENDING:
        return Refusal(
            "account_not_activated",
            "activate your account first with the link we emailed you; "
            "no email? ask for a new link (POST /v1/activations/resend) and check your spam folder",
            403,
        )
    if status == DISABLED:
        return Refusal(
            "account_disabled", "this account was disabled: contact the user administrator of your organisation", 403
        )
    if status == ACCESS_ENDED:
        return Refusal(
            "access_ended", "access ended 18 months after your last contract: contact customer service", 403
        )
    return None


def compromise_reported(state: dict) -> bool:
    """Someone else may know the password (the owner said so): the password alone proves nothing."""
    return state.get("compromise_reported_at") is not None


def refusal_after_compromise(state: dict) -> Refusal | None:
    """After a compromise report only the emailed reset link sets a new password: a change ticket for
    whoever knows the password would hand the account to the very person reported."""
    if not compromise_reported(state):
        return None
    return Refusal(
        "password_reset_required",
        "you reported that someone else may know your password, so it no longer opens your account: "
        "ask for a reset link by email (POST /v1/password-resets) and choose a new password with it",
        403,
    )


def must_change_password(state: dict, change_required_before: datetime | None) -> bool:
    if state.get("must_change_password"):
        return True
    changed = state.get("password_changed_at")
    return change_required_before is not None and changed is not None and changed < change_required_before


def needs_device_authorisation(state: dict) -> bool:
    """Customers whose login is linked to a contract, and every organisation user, authorise new devices."""
    if state["kind"] == ORG_USER:
        return True
    return state["kind"] == CUSTOMER and state.get("link", {}).get("status") == "verified"


def channels(state: dict) -> list[str]:
    return ["email", "sms"] if state.get("mobile") else ["email"]
