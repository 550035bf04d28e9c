"""The staff API: what was sent to a customer, and what became of it.

Recipients are masked (support can tell addresses apart, not read them), and so are the addresses
and numbers that providers quote in their reasons; the content of messages is never stored, so it
cannot be shown. Requests must carry ``STAFF_API_TOKEN`` as a bearer token; without one configured
the staff endpoints are closed (503), so that a forgotten setting never leaves them open.
"""

from __future__ import annotations

import hmac
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Header, HTTPException, Query
from pydantic import BaseModel

from services.notifications.adapters.store import DeliveryStore
from services.notifications.domain.delivery import Delivery
from shared.clock import Clock
from shared.logging import mask_email, mask_phone, scrub


class Attempt(BaseModel):
    at: datetime
    outcome: str
    reason: str | None = None


class DeliveryView(BaseModel):
    id: str
    status: str
    channel: str
    recipient: str
    template: str
    locale: str
    category: str
    source_event_id: str
    source_event_type: str
    created_at: datetime
    attempts: int
    next_attempt_at: datetime | None = None
    finished_at: datetime | None = None
    provider_id: str | None = None
    reason: str | None = None
    permanent: bool | None = None
    parked: bool | None = None
    fallback_of: str | None = None
    fallback_id: str | None = None
    note: str | None = None
    history: list[Attempt]


def view(doc: dict[str, Any], now: datetime) -> DeliveryView:
    delivery = Delivery.from_document(doc)
    recipient = mask_email(delivery.recipient) if delivery.channel == "email" else mask_phone(delivery.recipient)
    return DeliveryView(
        id=delivery.id,
        status=delivery.current_status(now).value,
        channel=delivery.channel,
        recipient=recipient,
        template=delivery.template,
        locale=delivery.locale,
        category=delivery.category,
        source_event_id=delivery.source_event_id,
        source_event_type=delivery.source_event_type,
        created_at=delivery.created_at,
        attempts=delivery.attempts,
        next_attempt_at=delivery.next_attempt_at,
        finished_at=doc.get("finished_at"),
        provider_id=doc.get("provider_id"),
        reason=_masked(doc.get("reason") or delivery.last_error),
        permanent=doc.get("permanent"),
        parked=doc.get("parked"),
        fallback_of=delivery.fallback_of,
        fallback_id=doc.get("fallback_id"),
        note=_masked(delivery.note),
        history=[Attempt(**{**entry, "reason": _masked(entry.get("reason"))}) for entry in delivery.log],
    )


def _masked(text: str | None) -> str | None:
    """A provider's words, which may quote the address or number they refuse (``<jeanne@…>: Relay
    access denied``, ``The 'To' number +336… is not valid``): masked like the recipient."""
    return scrub(text) if text else text


def add_routes(app: FastAPI, store: DeliveryStore, clock: Clock, staff_token: str) -> None:
    expected = f"Bearer {staff_token}".encode()

    async def staff_only(authorization: str | None = Header(default=None)) -> None:
        if not staff_token:
            raise HTTPException(status_code=503, detail="staff API disabled: set STAFF_API_TOKEN")
        if authorization is None or not hmac.compare_digest(authorization.encode(), expected):
            raise HTTPException(status_code=401, detail="staff token required",
                                headers={"WWW-Authenticate": "Bearer"})

    router = APIRouter(prefix="/v1", tags=["deliveries"], dependencies=[Depends(staff_only)])

    @router.get("/customers/{customer_id}/deliveries", response_model=list[DeliveryView])
    async def customer_deliveries(customer_id: str, limit: int = Query(default=50, ge=1, le=500)) -> list[DeliveryView]:
        """Every message sent, or being sent, to a customer: newest first."""
        now = clock.now()
        return [view(doc, now) for doc in await store.for_customer(customer_id, limit)]

    @router.get("/customer-numbers/{customer_number}/deliveries", response_model=list[DeliveryView])
    async def customer_number_deliveries(
        customer_number: str, limit: int = Query(default=50, ge=1, le=500)
    ) -> list[DeliveryView]:
        """The same, by customer number: the registration code is texted before any account (and
        customer id) exists."""
        now = clock.now()
        return [view(doc, now) for doc in await store.for_customer_number(customer_number, limit)]

    @router.get("/deliveries/{delivery_id}", response_model=DeliveryView)
    async def one_delivery(delivery_id: str) -> DeliveryView:
        doc = await store.one(delivery_id)
        if doc is None:
            raise HTTPException(status_code=404, detail="no such delivery")
        return view(doc, clock.now())

    app.include_router(router)
