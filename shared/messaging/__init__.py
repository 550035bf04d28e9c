"""Messaging plumbing: publishing through the outbox, consuming at least once, dead letters."""

from shared.messaging.consumer import Delivery, EventConsumer
from shared.messaging.errors import PermanentError, TransientError

__all__ = ["Delivery", "EventConsumer", "PermanentError", "TransientError"]
