"""What identity hears from Kafka: contract openings and closings, link verdicts."""

from __future__ import annotations

from services.identity.service_layer import contracts
from services.identity.service_layer.context import Identity
from shared.events import ContractClosed, ContractLinkRejected, ContractLinkVerified, ContractOpened
from shared.messaging import Delivery, EventConsumer


def subscribe(consumer: EventConsumer, ctx: Identity) -> None:
    @consumer.on(ContractLinkVerified)
    async def link_verified(event: ContractLinkVerified, delivery: Delivery) -> None:
        await contracts.on_link_verified(ctx, event, delivery)

    @consumer.on(ContractLinkRejected)
    async def link_rejected(event: ContractLinkRejected, delivery: Delivery) -> None:
        await contracts.on_link_rejected(ctx, event, delivery)

    @consumer.on(ContractOpened)
    async def contract_opened(event: ContractOpened, delivery: Delivery) -> None:
        await contracts.on_contract_opened(ctx, event, delivery)

    @consumer.on(ContractClosed)
    async def contract_closed(event: ContractClosed, delivery: Delivery) -> None:
        await contracts.on_contract_closed(ctx, event, delivery)
