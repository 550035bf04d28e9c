"""Finding an event class from what arrives on the wire, and the topic each event travels on."""

from __future__ import annotations

from shared.events.catalogue import EVENT_CLASSES
from shared.events.envelope import Event

DLQ_SUFFIX = ".dlq"


class UnknownEvent(LookupError):
    """No class in the catalogue for this (type, schema version)."""


def _index(classes: tuple[type[Event], ...]) -> dict[tuple[str, int], type[Event]]:
    index: dict[tuple[str, int], type[Event]] = {}
    for cls in classes:
        key = (cls.event_type, cls.schema_version)
        if key in index:
            raise ValueError(f"two catalogue classes claim {key}")
        if cls.subject_field not in cls.model_fields:
            raise ValueError(f"{cls.__name__}.subject_field {cls.subject_field!r} is not one of its fields")
        index[key] = cls
    return index


_BY_TYPE = _index(EVENT_CLASSES)


def event_class(event_type: str, schema_version: int) -> type[Event]:
    try:
        return _BY_TYPE[(event_type, schema_version)]
    except KeyError:
        known = sorted(v for t, v in _BY_TYPE if t == event_type)
        if known:
            raise UnknownEvent(
                f"{event_type} has no schema version {schema_version} here (known: {known})"
            ) from None
        raise UnknownEvent(f"unknown event type {event_type!r}") from None


def topic_for(event_type: str, namespace: str = "") -> str:
    """One topic per event type, named after it (behind a namespace prefix, empty in production,
    that lets test runs or tenants share one cluster without seeing each other's messages)."""
    return namespace + event_type


def dead_letter_topic(topic: str) -> str:
    return topic + DLQ_SUFFIX


def all_event_types() -> list[str]:
    return sorted({t for t, _ in _BY_TYPE})
