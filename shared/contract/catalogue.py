"""The event catalogue (JSON Schemas + an AsyncAPI document), generated from the models.

Nothing here is written by hand: every registered (type, version) in REGISTRY is picked up
automatically. The committed copy lives in docs/events and is regenerated with

    python -m shared.contract.catalogue docs/events

tests/contract/test_event_contract.py fails when the committed copy is out of date.
"""
from __future__ import annotations

import copy
import json
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from shared.contract.envelope import Envelope
from shared.contract.registry import REGISTRY
from shared.contract.topics import Topics

ASYNCAPI_VERSION = "2.6.0"
CATALOGUE_TITLE = "Tahsilat events"
CATALOGUE_VERSION = "1.0.0"
KAFKA_BINDING_VERSION = "0.4.0"
DEFAULT_OUTDIR = Path("docs/events")

# Which service publishes which event types. Each service publishes on the Topics attribute of
# the same name. A registered type missing here is still catalogued (components) but on no channel.
PRODUCERS: dict[str, tuple[str, ...]] = {
    "invoicing": ("CustomerUpserted", "InvoiceIssued", "InvoiceAdjusted", "InvoiceCancelled", "PaymentReceived",
                  "PaymentReversed", "CreditApplied", "CreditNoteIssued", "InvoicePaid", "InvoiceOverdue", "BalanceConfirmationRequested",
                  "BalanceConfirmed", "BalanceContested"),
    "dunning": ("NotificationRequested", "DunningStepExecuted", "LateFeeAssessed", "InterestAccrued", "DisputeOpened", "DisputeResolved",
                "DisputeAgeing", "CreditNoteRequested", "PromiseToPayRecorded", "PromiseToPayKept", "PromiseToPayBroken",
                "PaymentPlanAgreed", "PaymentPlanBroken", "PaymentPlanCompleted", "CaseEscalatedToLegal",
                "SettlementOffered", "SettlementAccepted", "SettlementOfferEnded", "CollectorTaskCreated",
                "CollectorTaskAssigned", "ContactLogged"),
    "notifier": ("NotificationSent", "NotificationDelivered", "NotificationFailed", "ContactOptedOut",
                 "ContactOptedIn"),
    "risk": ("RiskAssessed", "EarlyWarningRaised", "CreditLimitSet", "CreditLimitExceeded", "CreditHoldPlaced",
             "CreditHoldReleased", "CreditApplicationDecided"),
}

# Topics that carry no catalogued event type of their own.
_OTHER_TOPICS: dict[str, str] = {
    "ingest": "Billing-source ingest records; no catalogued integration event is published here.",
    "dead_letter": (
        "Records a consumer could not process, copied unchanged (value and key) with the headers "
        "dlq_reason, dlq_consumer, dlq_original_topic, dlq_original_partition and dlq_original_offset."
    ),
}

KEY_DESCRIPTION = (
    "Kafka message key `tenant_id:customer_id` (UTF-8): everything about one customer of one "
    "tenant lands on one partition, in order."
)

# A schema file name written by write_catalogue: "<Type>.v<N>.json" or "Envelope.json".
_GENERATED_SCHEMA = re.compile(r"^(?:[A-Za-z0-9_]+\.v[0-9]+|Envelope)\.json$")


def message_name(event_type: str, version: int) -> str:
    return f"{event_type}.v{version}"


def json_schemas() -> dict[str, dict[str, Any]]:
    """"Type.vN" -> JSON Schema of that payload (self-contained, with its own $defs), plus "Envelope"."""
    schemas: dict[str, dict[str, Any]] = {
        message_name(t, v): cls.model_json_schema() for (t, v), cls in REGISTRY.items()
    }
    schemas["Envelope"] = Envelope.model_json_schema()
    return schemas


def _component_schemas(name: str, cls: type) -> dict[str, dict[str, Any]]:
    """The payload schema as components/schemas entries, nested models hoisted as "<name>.<Model>"."""
    schema = cls.model_json_schema(ref_template=f"#/components/schemas/{name}.{{model}}")
    defs = schema.pop("$defs", {})
    out = {name: schema}
    out.update({f"{name}.{model}": sub for model, sub in defs.items()})
    return out


def _message(event_type: str, version: int, envelope_schema: dict[str, Any]) -> dict[str, Any]:
    name = message_name(event_type, version)
    payload = copy.deepcopy(envelope_schema)
    payload["title"] = f"{name} envelope"
    props = payload["properties"]
    props["type"] = {**props["type"], "const": event_type}
    props["version"] = {**props["version"], "const": version}
    props["data"] = {"$ref": f"#/components/schemas/{name}"}
    return {
        "messageId": name,
        "name": event_type,
        "title": f"{event_type} v{version}",
        "summary": f"{event_type} (version {version}) in the Tahsilat envelope; `data` is the payload.",
        "contentType": "application/json",
        "correlationId": {
            "description": "Shared by every event caused by the same original request.",
            "location": "$message.payload#/correlation_id",
        },
        "payload": payload,
        "bindings": {
            "kafka": {
                "key": {"type": "string", "description": KEY_DESCRIPTION, "examples": ["acme:cust-42"]},
                "bindingVersion": KAFKA_BINDING_VERSION,
            }
        },
    }


def _check_producers() -> None:
    known = {t for (t, _v), _cls in REGISTRY.items()}
    for service, types in PRODUCERS.items():
        if not hasattr(Topics, service):
            raise ValueError(f"PRODUCERS names service {service!r}, which has no topic in Topics")
        unknown = sorted(set(types) - known)
        if unknown:
            raise ValueError(f"PRODUCERS[{service!r}] names unregistered event types: {unknown}")


def asyncapi(topics: Topics | None = None) -> dict[str, Any]:
    """An AsyncAPI 2.6 document: one channel per topic, one message per registered (type, version)."""
    topics = topics or Topics()
    _check_producers()
    envelope_schema = Envelope.model_json_schema()
    if "$defs" in envelope_schema:  # would need hoisting like the payloads; not the case today
        raise ValueError("the Envelope schema has $defs; teach catalogue.asyncapi to hoist them")

    schemas: dict[str, Any] = {"Envelope": envelope_schema}
    messages: dict[str, Any] = {}
    by_type: dict[str, list[str]] = {}
    for (event_type, version), cls in REGISTRY.items():
        name = message_name(event_type, version)
        schemas.update(_component_schemas(name, cls))
        messages[name] = _message(event_type, version, envelope_schema)
        by_type.setdefault(event_type, []).append(name)

    channels: dict[str, Any] = {}
    for service, types in PRODUCERS.items():
        refs = [
            {"$ref": f"#/components/messages/{name}"}
            for event_type in sorted(types)
            for name in by_type.get(event_type, [])
        ]
        channels[getattr(topics, service)] = {
            "description": f"Events published by the {service} service.",
            "subscribe": {
                "operationId": f"{service}Events",
                "summary": f"The {service} service publishes; any service may subscribe.",
                "message": {"oneOf": refs},
            },
            "bindings": {"kafka": {"topic": getattr(topics, service), "bindingVersion": KAFKA_BINDING_VERSION}},
        }
    for attr, description in _OTHER_TOPICS.items():
        topic = getattr(topics, attr)
        channels.setdefault(topic, {
            "description": description,
            "bindings": {"kafka": {"topic": topic, "bindingVersion": KAFKA_BINDING_VERSION}},
        })

    return {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": CATALOGUE_TITLE,
            "version": CATALOGUE_VERSION,
            "description": (
                "Integration events of the Tahsilat accounts-receivable platform, generated from "
                "shared/contract (python -m shared.contract.catalogue). Every message is a "
                "CloudEvents-aligned envelope whose `data` is the versioned event payload; "
                "amounts are integer minor units plus an ISO 4217 currency code."
            ),
        },
        "defaultContentType": "application/json",
        "channels": channels,
        "components": {"schemas": schemas, "messages": messages},
    }


def _dump(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def write_catalogue(directory: Path) -> list[Path]:
    """Write <dir>/schemas/<Type>.v<N>.json, <dir>/schemas/Envelope.json and <dir>/asyncapi.json.

    Generated schema files for types that are no longer registered are removed.
    """
    directory = Path(directory)
    schema_dir = directory / "schemas"
    schema_dir.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, schema in sorted(json_schemas().items()):
        path = schema_dir / f"{name}.json"
        path.write_text(_dump(schema), encoding="utf-8")
        written.append(path)
    for stale in schema_dir.glob("*.json"):
        if stale not in written and _GENERATED_SCHEMA.match(stale.name):
            stale.unlink()
    path = directory / "asyncapi.json"
    path.write_text(_dump(asyncapi()), encoding="utf-8")
    written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) > 1 or any(a.startswith("-") for a in args):
        print("usage: python -m shared.contract.catalogue [OUTDIR]  (default: docs/events)", file=sys.stderr)
        return 2
    outdir = Path(args[0]) if args else DEFAULT_OUTDIR
    paths = write_catalogue(outdir)
    print(f"wrote {len(paths)} files to {outdir}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
