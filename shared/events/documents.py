"""JSON Schema per event and the AsyncAPI document, generated from the catalogue.

``python -m shared.events.documents`` rewrites ``docs/events/``; ``--check`` exits 1 when the
committed documents differ from what the code generates (the test suite runs the check).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from shared.events.catalogue import EVENT_CLASSES
from shared.events.envelope import Envelope, Event
from shared.events.registry import dead_letter_topic, topic_for

DOCS_DIR = Path(__file__).resolve().parents[2] / "docs" / "events"


def schema_file_name(cls: type[Event]) -> str:
    return f"{cls.event_type}.v{cls.schema_version}.schema.json"


def event_json_schema(cls: type[Event]) -> dict[str, Any]:
    """The whole CloudEvent as it appears on the wire, with ``data`` typed by the event class."""
    envelope = Envelope.model_json_schema()
    data = cls.model_json_schema(ref_template="#/$defs/{model}")
    defs = {**envelope.pop("$defs", {}), **data.pop("$defs", {})}
    envelope["properties"]["type"] = {"const": cls.event_type, "type": "string"}
    envelope["properties"]["schemaversion"] = {"const": cls.schema_version, "type": "integer"}
    envelope["properties"]["data"] = data
    schema: dict[str, Any] = {
        **envelope,
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"urn:leaseline:event:{cls.event_type}:v{cls.schema_version}",
        "title": f"{cls.event_type} v{cls.schema_version}",
        "description": (cls.__doc__ or "").strip() or None,
        "x-kafka-topic": topic_for(cls.event_type),
        "x-kafka-key": f"data.{cls.subject_field}",
    }
    if defs:
        schema["$defs"] = defs
    return {k: v for k, v in schema.items() if v is not None}


def asyncapi_document() -> dict[str, Any]:
    channels: dict[str, Any] = {}
    operations: dict[str, Any] = {}
    messages: dict[str, Any] = {}
    for cls in EVENT_CLASSES:
        name = f"{cls.event_type}.v{cls.schema_version}".replace(".", "_")
        topic = topic_for(cls.event_type)
        messages[name] = {
            "name": cls.event_type,
            "title": cls.__name__,
            "summary": (cls.__doc__ or cls.__name__).strip().splitlines()[0],
            "contentType": "application/cloudevents+json",
            "payload": {"$ref": f"./schemas/{schema_file_name(cls)}"},
            "bindings": {"kafka": {"key": {"type": "string", "description": f"data.{cls.subject_field}"}}},
        }
        channel = channels.setdefault(topic, {"address": topic, "messages": {}})
        channel["messages"][name] = {"$ref": f"#/components/messages/{name}"}
        operations[f"publish_{name}"] = {
            "action": "send",
            "channel": {"$ref": f"#/channels/{topic.replace('/', '~1')}"},
            "messages": [{"$ref": f"#/channels/{topic}/messages/{name}"}],
        }
        dlq = dead_letter_topic(topic)
        channels.setdefault(
            dlq,
            {
                "address": dlq,
                "description": f"Messages from {topic} that could not be handled, with the reason in headers.",
                "messages": {},
            },
        )
    return {
        "asyncapi": "3.0.0",
        "info": {
            "title": "Leaseline integration events",
            "version": "1.0.0",
            "description": (
                "CloudEvents 1.0 (structured JSON) on Kafka, one topic per event type, keyed by the "
                "aggregate id. Readers ignore unknown fields. Dead-letter topics end in '.dlq'."
            ),
        },
        "defaultContentType": "application/cloudevents+json",
        "channels": channels,
        "operations": operations,
        "components": {"messages": messages},
    }


def render_all() -> dict[Path, str]:
    files = {
        DOCS_DIR / "schemas" / schema_file_name(cls): json.dumps(event_json_schema(cls), indent=2, sort_keys=True)
        + "\n"
        for cls in EVENT_CLASSES
    }
    files[DOCS_DIR / "asyncapi.json"] = json.dumps(asyncapi_document(), indent=2, sort_keys=True) + "\n"
    return files


def stale_documents() -> list[str]:
    """Paths whose committed content differs from the generated one, plus stray schema files."""
    files = render_all()
    stale = [str(path) for path, text in files.items() if not path.exists() or path.read_text() != text]
    schemas = DOCS_DIR / "schemas"
    if schemas.exists():
        stale += [str(p) for p in schemas.glob("*.json") if p not in files]
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail when docs/events is out of date")
    args = parser.parse_args(argv)
    if args.check:
        stale = stale_documents()
        for path in stale:
            print(f"out of date: {path}", file=sys.stderr)
        if stale:
            print("run: python -m shared.events.documents", file=sys.stderr)
        return 1 if stale else 0
    schemas = DOCS_DIR / "schemas"
    schemas.mkdir(parents=True, exist_ok=True)
    files = render_all()
    for stray in schemas.glob("*.json"):
        if stray not in files:
            stray.unlink()
    for path, text in files.items():
        path.write_text(text)
    print(f"wrote {len(files)} documents under {DOCS_DIR}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
