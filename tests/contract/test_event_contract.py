"""The event contract: schema snapshots, the generated catalogue, round-trips, upcasting, money.

Every check iterates REGISTRY, so event classes added to shared/contract/events.py are covered
automatically (they only need a snapshot: `python -m tests.contract.refresh`).
"""
from __future__ import annotations

import json
import os
import sys
import types
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import jsonschema
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import AwareDatetime, BaseModel, NaiveDatetime, ValidationError
from pydantic.fields import FieldInfo

_ROOT = Path(__file__).resolve().parents[2]
if str(_ROOT) not in sys.path:  # so `tests.contract.*` imports under any pytest import mode
    sys.path.insert(0, str(_ROOT))

from shared.contract import REGISTRY, Envelope, new_envelope, partition_key  # noqa: E402
from shared.contract.catalogue import PRODUCERS, asyncapi, json_schemas, message_name, write_catalogue  # noqa: E402
from shared.contract.events import CustomerUpserted, EventPayload  # noqa: E402
from shared.contract.money import known_currencies, validate_currency  # noqa: E402
from shared.contract.registry import EventRegistry, UnknownEventType  # noqa: E402
from shared.contract.topics import Topics  # noqa: E402
from tests.contract.compat import (  # noqa: E402
    REFRESH_COMMAND,
    SNAPSHOT_DIR,
    breaking_changes,
    dump_schema,
    json_types,
    load_snapshots,
    snapshot_path,
    walk_properties,
)

DOCS_DIR = _ROOT / "docs" / "events"
REGENERATE_COMMAND = "python -m shared.contract.catalogue docs/events"
UPDATE_SNAPSHOTS = os.environ.get("UPDATE_SNAPSHOTS", "").lower() in {"1", "true", "yes"}

EVENTS = REGISTRY.items()
EVENT_IDS = [message_name(t, v) for (t, v), _cls in EVENTS]


# -- (a) schema snapshots: add-only within a version ------------------------------------------------

@pytest.mark.parametrize(("key", "cls"), EVENTS, ids=EVENT_IDS)
def test_schema_matches_snapshot(key: tuple[str, int], cls: type[EventPayload]) -> None:
    name = message_name(*key)
    schema = cls.model_json_schema()
    path = snapshot_path(name)
    if not path.exists():
        if UPDATE_SNAPSHOTS:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(dump_schema(schema), encoding="utf-8")
            return
        pytest.fail(
            f"{name} is registered but has no schema snapshot at {path.relative_to(_ROOT)}.\n"
            f"Create it with: {REFRESH_COMMAND}\nand commit it together with the new event.",
            pytrace=False,
        )
    old = json.loads(path.read_text(encoding="utf-8"))
    problems = breaking_changes(old, schema)
    if problems:
        pytest.fail(
            f"{name}: breaking change(s) to a published event version:\n"
            + "".join(f"  - {p}\n" for p in problems)
            + f"Within a version the contract is add-only (new optional fields only). Register "
            f"{key[0]} v{key[1] + 1} instead, with an upcaster from v{key[1]} "
            f"(@REGISTRY.upcaster({key[0]!r}, {key[1]})), and keep v{key[1]} as it is.",
            pytrace=False,
        )
    if old != schema:
        if UPDATE_SNAPSHOTS:
            path.write_text(dump_schema(schema), encoding="utf-8")
            return
        pytest.fail(
            f"{name}: the schema changed compatibly (e.g. a new optional field) but the snapshot "
            f"{path.relative_to(_ROOT)} is stale.\nRefresh it with: {REFRESH_COMMAND}",
            pytrace=False,
        )


def test_no_snapshot_for_an_unregistered_version() -> None:
    registered = set(EVENT_IDS)
    orphans = sorted(set(load_snapshots()) - registered)
    assert not orphans, (
        f"snapshots exist for event versions that are no longer registered: {orphans}. "
        "Removing a published (type, version) breaks consumers and stored events; keep the model "
        f"registered (upcast it to the newest version) or, if it never shipped, delete the file in {SNAPSHOT_DIR}."
    )


def test_old_versions_can_be_upcast_to_the_newest() -> None:
    missing = []
    for event_type in sorted({t for (t, _v), _c in EVENTS}):
        latest = REGISTRY.latest_version(event_type)
        for version in range(1, latest):
            if (event_type, version) in dict(EVENTS) and (event_type, version) not in REGISTRY._upcasters:
                missing.append(f"{event_type} v{version} -> v{version + 1}")
    assert not missing, f"no upcaster registered for: {missing}"


# breaking_changes on hand-made schemas ------------------------------------------------------------

def _obj(properties: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": required or [], **extra}


BASE = _obj(
    {
        "customer_id": {"type": "string", "minLength": 1},
        "amount_minor": {"type": "integer", "exclusiveMinimum": 0},
        "channel": {"enum": ["email", "sms"], "type": "string"},
        "note": {"anyOf": [{"type": "string"}, {"type": "null"}], "default": None},
        "due_date": {"type": "string", "format": "date"},
        "items": {"type": "array", "items": {"$ref": "#/$defs/Item"}},
    },
    ["customer_id", "amount_minor", "channel", "due_date", "items"],
    **{"$defs": {"Item": _obj({"invoice_id": {"type": "string"}, "open_minor": {"type": "integer"}}, ["invoice_id"])}},
)


def _changed(**edits: Any) -> dict[str, Any]:
    new = json.loads(json.dumps(BASE))
    for path, value in edits.items():
        *parents, leaf = path.split("__")
        node = new
        for part in parents:
            node = node[part]
        if value is None:
            del node[leaf]
        else:
            node[leaf] = value
    return new


def test_compat_identical_schema_is_compatible() -> None:
    assert breaking_changes(BASE, json.loads(json.dumps(BASE))) == []


def test_compat_new_optional_field_is_compatible() -> None:
    new = _changed(properties__email={"anyOf": [{"type": "string"}, {"type": "null"}], "default": None})
    assert breaking_changes(BASE, new) == []


def test_compat_new_enum_value_and_doc_changes_are_compatible() -> None:
    new = _changed(properties__channel={"enum": ["email", "sms", "letter"], "type": "string", "title": "Channel"})
    new["description"] = "now documented"
    assert breaking_changes(BASE, new) == []


def test_compat_removed_field_is_breaking() -> None:
    problems = breaking_changes(BASE, _changed(properties__note=None))
    assert problems == ["field 'note' was removed"]


def test_compat_removed_nested_field_is_breaking() -> None:
    problems = breaking_changes(BASE, _changed(**{"$defs__Item__properties__open_minor": None}))
    assert problems == ["field 'items[].open_minor' was removed"]


def test_compat_type_change_is_breaking() -> None:
    problems = breaking_changes(BASE, _changed(properties__amount_minor={"type": "number"}))
    assert problems == ["field 'amount_minor' changed type from integer to number"]
    problems = breaking_changes(BASE, _changed(properties__due_date={"type": "string", "format": "date-time"}))
    assert problems == ["field 'due_date' changed type from string(date) to string(date-time)"]
    problems = breaking_changes(BASE, _changed(properties__customer_id={"anyOf": [{"type": "string"}, {"type": "null"}]}))
    assert problems == ["field 'customer_id' changed type from string to null | string"]


def test_compat_new_required_field_is_breaking() -> None:
    new = _changed(properties__currency={"type": "string"}, required=[*BASE["required"], "currency"])
    assert breaking_changes(BASE, new) == ["new field 'currency' is required (new fields must be optional)"]


def test_compat_optional_field_becoming_required_is_breaking() -> None:
    new = _changed(required=[*BASE["required"], "note"])
    assert breaking_changes(BASE, new) == ["field 'note' is now required (it was optional)"]


def test_compat_enum_losing_a_value_is_breaking() -> None:
    problems = breaking_changes(BASE, _changed(properties__channel={"enum": ["email"], "type": "string"}))
    assert problems == ["field 'channel': enum lost value(s) \"sms\""]


def test_compat_tightened_constraint_is_breaking_and_relaxed_is_not() -> None:
    tightened = _changed(properties__customer_id={"type": "string", "minLength": 3})
    assert breaking_changes(BASE, tightened) == ["field 'customer_id': constraint minLength tightened from 1 to 3"]
    tightened = _changed(properties__amount_minor={"type": "integer", "minimum": 1, "maximum": 10**9})
    assert breaking_changes(BASE, tightened) == [
        "field 'amount_minor': lower bound tightened from 0 (exclusive) to 1",
        "field 'amount_minor': upper bound tightened from none to 1000000000",
    ]
    relaxed = _changed(properties__amount_minor={"type": "integer", "minimum": 0})
    assert breaking_changes(BASE, relaxed) == []


def test_compat_on_real_models_detects_a_removed_and_a_new_required_field() -> None:
    from shared.contract.events import InvoicePaid

    class Narrowed(EventPayload):  # InvoicePaid with days_late removed and a new required field
        invoice_id: str
        currency: str
        amount_minor: int
        due_date: date
        paid_at: AwareDatetime
        method: str

    problems = breaking_changes(InvoicePaid.model_json_schema(), Narrowed.model_json_schema())
    assert "field 'days_late' was removed" in problems
    assert "new field 'method' is required (new fields must be optional)" in problems


# -- (b) the committed catalogue is generated, never hand-edited -----------------------------------

def _tree(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): p.read_text(encoding="utf-8")
        for p in sorted(directory.rglob("*")) if p.is_file()
    }


def test_committed_catalogue_is_up_to_date(tmp_path: Path) -> None:
    fresh = tmp_path / "events"
    written = write_catalogue(fresh)
    assert {p.relative_to(fresh).as_posix() for p in written} == set(_tree(fresh))
    expected, committed = _tree(fresh), _tree(DOCS_DIR) if DOCS_DIR.exists() else {}
    missing = sorted(set(expected) - set(committed))
    extra = sorted(set(committed) - set(expected))
    stale = sorted(n for n in set(expected) & set(committed) if expected[n] != committed[n])
    assert not (missing or extra or stale), (
        f"docs/events is out of date (missing: {missing}, unexpected: {extra}, differing: {stale}).\n"
        f"It is generated from shared/contract, never edited by hand. Regenerate it with:\n"
        f"    {REGENERATE_COMMAND}"
    )


def test_asyncapi_document_is_consistent() -> None:
    topics = Topics(prefix="test.")
    doc = asyncapi(topics)
    assert doc["asyncapi"].startswith(("2.6", "3.0"))
    assert doc["info"]["title"] == "Tahsilat events" and doc["info"]["version"]
    assert set(doc["channels"]) == set(topics.all())
    assert set(doc["components"]["messages"]) == set(EVENT_IDS)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            own = [node["$ref"]] if "$ref" in node else []
            return own + [r for v in node.values() for r in refs(v)]
        if isinstance(node, list):
            return [r for v in node for r in refs(v)]
        return []

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, f"dangling $ref {ref}"
            target = target[part]

    for service, event_types in PRODUCERS.items():
        channel = doc["channels"][getattr(topics, service)]
        published = {r["$ref"].rsplit("/", 1)[1] for r in channel["subscribe"]["message"]["oneOf"]}
        expected = {message_name(t, v) for (t, v), _c in EVENTS if t in event_types}
        assert published == expected, service
    for name, message in doc["components"]["messages"].items():
        assert message["payload"]["properties"]["data"] == {"$ref": f"#/components/schemas/{name}"}
        assert "tenant_id:customer_id" in message["bindings"]["kafka"]["key"]["description"]


def test_json_schemas_cover_the_registry_and_the_envelope() -> None:
    schemas = json_schemas()
    assert set(schemas) == {*EVENT_IDS, "Envelope"}
    assert schemas["Envelope"] == Envelope.model_json_schema()


# -- (c) every event round-trips through the envelope ----------------------------------------------

_TZ = st.integers(min_value=-14 * 60, max_value=14 * 60).map(lambda m: timezone(timedelta(minutes=m)))
_LIMITS = {"gt": "min_value", "ge": "min_value", "lt": "max_value", "le": "max_value"}


def _bounds(metadata: list[Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for m in metadata:
        for attr in ("gt", "ge", "lt", "le", "min_length", "max_length"):
            if getattr(m, attr, None) is not None:
                out[attr] = getattr(m, attr)
    return out


def _strategy(tp: Any, metadata: list[Any]) -> st.SearchStrategy[Any]:
    """A strategy for a pydantic field type, honouring its constraints (good enough for the contract)."""
    if get_origin(tp) is Annotated:
        base, *extra = get_args(tp)
        return _strategy(base, [*metadata, *extra])
    if any(getattr(m, "func", None) is validate_currency for m in metadata):
        return st.sampled_from(sorted(known_currencies()))
    origin, args = get_origin(tp), get_args(tp)
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (Union, types.UnionType):
        return st.one_of([st.none() if a is type(None) else _strategy(a, metadata) for a in args])
    if origin in (list, tuple, set, frozenset) and args:
        item = _strategy(args[0], [])
        lists = st.lists(item, max_size=3)
        return lists if origin is list else lists.map(origin if origin is not tuple else tuple)
    if origin is dict:
        return st.dictionaries(st.text(max_size=10), _strategy(args[1], []), max_size=3)
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        return model_strategy(tp)
    b = _bounds(metadata)
    if tp is str:
        pattern = next((m.pattern for m in metadata if getattr(m, "pattern", None)), None)
        if pattern:
            return st.from_regex(pattern, fullmatch=True)
        min_size = b.get("min_length", 0)
        return st.text(min_size=min_size, max_size=min(b.get("max_length", 30), min_size + 30))
    if tp is bool:
        return st.booleans()
    if tp is int:
        lo = b["gt"] + 1 if "gt" in b else b.get("ge")
        hi = b["lt"] - 1 if "lt" in b else b.get("le")
        return st.integers(min_value=lo, max_value=hi)
    if tp is float:
        return st.floats(
            min_value=b.get("gt", b.get("ge")), max_value=b.get("lt", b.get("le")),
            exclude_min="gt" in b, exclude_max="lt" in b, allow_nan=False, allow_infinity=False,
        )
    if tp is AwareDatetime:
        return st.datetimes(timezones=_TZ)
    if tp in (datetime, NaiveDatetime):
        return st.datetimes()
    if tp is date:
        return st.dates()
    return st.from_type(tp)


def _field_strategies(model: type[BaseModel]) -> dict[str, st.SearchStrategy[Any]]:
    fields: dict[str, FieldInfo] = model.model_fields
    return {f.alias or name: _strategy(f.annotation, list(f.metadata)) for name, f in fields.items()}


def _build(model: type[BaseModel], kwargs: dict[str, Any]) -> BaseModel:
    try:
        return model(**kwargs)
    except ValidationError:  # a cross-field rule the generic strategy does not know about
        assume(False)
        raise


def model_strategy(model: type[BaseModel]) -> st.SearchStrategy[BaseModel]:
    return st.fixed_dictionaries(_field_strategies(model)).map(lambda kw: _build(model, kw))


_ASYNCAPI = asyncapi()
_PAYLOAD_SCHEMAS = json_schemas()


@pytest.mark.parametrize(("key", "cls"), EVENTS, ids=EVENT_IDS)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_event_round_trips_through_the_envelope(key: tuple[str, int], cls: type[EventPayload], data: st.DataObject) -> None:
    payload = data.draw(model_strategy(cls), label="payload")
    tenant_id = data.draw(st.text(min_size=1, max_size=20), label="tenant_id")
    time = data.draw(st.datetimes(timezones=_TZ), label="time")
    envelope = new_envelope(payload, source="tests.contract", tenant_id=tenant_id, subject="subject-1", time=time)
    assert (envelope.type, envelope.version) == key

    raw = envelope.model_dump_json()
    parsed = Envelope.model_validate_json(raw)
    assert parsed == envelope
    again = parsed.payload()
    assert type(again) is cls
    assert again == payload
    assert parsed.key == partition_key(tenant_id, payload.customer_id)

    # the published schemas accept what producers really send
    document = json.loads(raw)
    jsonschema.Draft202012Validator(_PAYLOAD_SCHEMAS[message_name(*key)]).validate(document["data"])
    envelope_schema = {"$ref": f"#/components/messages/{message_name(*key)}/payload", "components": _ASYNCAPI["components"]}
    jsonschema.Draft202012Validator(envelope_schema).validate(document)


def test_envelope_of_unknown_type_or_future_version_is_rejected() -> None:
    payload = CustomerUpserted(customer_id="c-1", name="Acme")
    envelope = new_envelope(payload, source="t", tenant_id="acme", subject="s", time=datetime.now(timezone.utc))
    with pytest.raises(UnknownEventType):
        envelope.model_copy(update={"type": "NoSuchEvent"}).payload()
    with pytest.raises(UnknownEventType):
        envelope.model_copy(update={"version": REGISTRY.latest_version(envelope.type) + 1}).payload()


# -- (d) upcasting ---------------------------------------------------------------------------------

def test_upcaster_turns_old_data_into_the_newest_model() -> None:
    registry = EventRegistry()

    @registry.register("DummyCharged", 1)
    class DummyChargedV1(EventPayload):
        amount: str  # "12.50 EUR": the mistake v2 fixes

    @registry.register("DummyCharged", 2)
    class DummyChargedV2(EventPayload):
        amount_minor: int
        currency: str
        reason: str = "unknown"

    @registry.upcaster("DummyCharged", 1)
    def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
        major, currency = data["amount"].split()
        whole, _, cents = major.partition(".")
        rest = {k: v for k, v in data.items() if k != "amount"}
        return {**rest, "amount_minor": int(whole) * 100 + int(cents.ljust(2, "0")), "currency": currency}

    v1 = DummyChargedV1(customer_id="c-1", amount="12.50 EUR")
    parsed = registry.parse("DummyCharged", 1, v1.model_dump(mode="json"))
    assert type(parsed) is DummyChargedV2
    assert parsed == DummyChargedV2(customer_id="c-1", amount_minor=1250, currency="EUR")
    assert registry.parse("DummyCharged", 2, parsed.model_dump(mode="json")) == parsed
    assert registry.latest_version("DummyCharged") == 2
    with pytest.raises(UnknownEventType):
        registry.parse("DummyCharged", 3, {})
    assert ("DummyCharged", 1) not in dict(REGISTRY.items())  # the fresh registry left the global one alone


# -- (e) money is integer minor units --------------------------------------------------------------

def test_no_amount_is_a_float() -> None:
    offenders = [
        f"{name}: {path} ({', '.join(sorted(json_types(sub, schema)))})"
        for name, schema in _PAYLOAD_SCHEMAS.items() if name != "Envelope"
        for path, field, sub in walk_properties(schema)
        if "amount" in field.lower() and "number" in json_types(sub, schema)
    ]
    assert not offenders, f"money must be integer minor units (int + currency), not floats: {offenders}"


def test_minor_unit_fields_are_integers() -> None:
    offenders = [
        f"{name}: {path}"
        for name, schema in _PAYLOAD_SCHEMAS.items() if name != "Envelope"
        for path, field, sub in walk_properties(schema)
        if field.endswith("_minor") and json_types(sub, schema) - {"null"} != {"integer"}
    ]
    assert not offenders, f"*_minor fields must be integers: {offenders}"
