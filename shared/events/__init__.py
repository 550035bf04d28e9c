"""The event catalogue: the public contract between Leaseline's services."""

from shared.events.catalogue import *  # noqa: F403  (the catalogue is the public surface)
from shared.events.catalogue import EVENT_CLASSES
from shared.events.envelope import Envelope, Event, Sealed
from shared.events.registry import UnknownEvent, dead_letter_topic, event_class, topic_for

__all__ = [  # noqa: PLE0604
    "EVENT_CLASSES",
    "Envelope",
    "Event",
    "Sealed",
    "UnknownEvent",
    "dead_letter_topic",
    "event_class",
    "topic_for",
    *[cls.__name__ for cls in EVENT_CLASSES],
]
