import json
from datetime import UTC, datetime, timedelta

import jsonschema
import pytest

from shared.crypto import Keyring
from shared.events import EVENT_CLASSES, CustomerRegistered, Envelope, event_class
from shared.events.documents import event_json_schema, stale_documents
from shared.events.registry import UnknownEvent

AT = datetime(2026, 11, 22, 9, 30, tzinfo=UTC)


def registered() -> CustomerRegistered:
    ring = Keyring.parse(Keyring.generate_spec())
    return CustomerRegistered(
        customer_id="cus_jeanne",
        email="jeanne.martin@example.fr",
        first_name="Jeanne",
        last_name="Martin",
        locale="fr-FR",
        mobile="+33612345678",
        terms_version="FR-2026-09",
        activation_token=CustomerRegistered.seal(ring, "activation_token", "tok"),
        activation_expires_at=AT + timedelta(hours=72),
    )


def test_the_envelope_is_a_cloudevent_keyed_by_the_aggregate() -> None:
    envelope = Envelope.wrap(registered(), source="identity", time=AT, correlation_id="req-1")
    wire = json.loads(envelope.to_bytes())
    assert wire["specversion"] == "1.0"
    assert wire["type"] == "customer.registered"
    assert wire["source"] == "leaseline/identity"
    assert wire["subject"] == "cus_jeanne"
    assert wire["correlationid"] == "req-1"
    assert wire["schemaversion"] == 1
    assert wire["data"]["email"] == "jeanne.martin@example.fr"


def test_an_event_without_correlation_starts_its_own() -> None:
    envelope = Envelope.wrap(registered(), source="identity", time=AT)
    assert envelope.correlationid == envelope.id


def test_readers_ignore_fields_they_do_not_know() -> None:
    data = registered().model_dump(mode="json") | {"loyalty_tier": "gold"}
    assert CustomerRegistered.model_validate(data).customer_id == "cus_jeanne"


def test_a_secret_in_clear_fails_the_schema() -> None:
    data = registered().model_dump(mode="json") | {"activation_token": "plain-token"}
    with pytest.raises(ValueError):
        CustomerRegistered.model_validate(data)


@pytest.mark.parametrize("cls", EVENT_CLASSES, ids=lambda c: c.event_type)
def test_every_catalogue_event_names_a_subject_field_it_has(cls: type) -> None:
    assert cls.subject_field in cls.model_fields


def test_every_catalogue_event_round_trips_through_its_json_schema() -> None:
    from tests.unit.examples import example_events

    examples = example_events()
    assert {type(e) for e in examples} == set(EVENT_CLASSES), "an example for every catalogue event"
    for event in examples:
        wire = json.loads(Envelope.wrap(event, source="test", time=AT).to_bytes())
        jsonschema.validate(wire, event_json_schema(type(event)), format_checker=jsonschema.FormatChecker())
        again = event_class(wire["type"], wire["schemaversion"]).model_validate(wire["data"])
        assert again == event


def test_the_schema_rejects_a_payload_the_model_rejects() -> None:
    wire = json.loads(Envelope.wrap(registered(), source="test", time=AT).to_bytes())
    del wire["data"]["email"]
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(wire, event_json_schema(CustomerRegistered))


def test_unknown_types_and_versions_are_told_apart() -> None:
    with pytest.raises(UnknownEvent, match="unknown event type"):
        event_class("customer.teleported", 1)
    with pytest.raises(UnknownEvent, match="no schema version 9"):
        event_class("customer.registered", 9)


def test_committed_schemas_and_asyncapi_document_are_current() -> None:
    assert stale_documents() == [], "run: python -m shared.events.documents"
