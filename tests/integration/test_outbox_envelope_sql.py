"""Envelopes built by PostgreSQL (set-based use cases) are the envelopes new_envelope builds."""
from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timezone

import asyncpg
import pytest

from shared.contract import Envelope, InvoiceIssued, new_envelope
from shared.outbox import envelope_select, iso_time

@pytest.mark.asyncio
async def test_sql_envelope_parses_to_the_python_envelope(database: str) -> None:
    now = datetime(2026, 3, 29, 1, 30, 15, 123456, tzinfo=timezone.utc)
    payload = InvoiceIssued(customer_id="CUST-1", invoice_id=str(uuid.uuid4()), billing_source="erp",
                            external_id="INV-1", number="2026/1", currency="EUR", amount_minor=123_45,
                            issue_date=date(2026, 3, 1), due_date=date(2026, 3, 31))
    expected = new_envelope(payload, source="invoicing", tenant_id="acme", subject=payload.invoice_id, time=now)
    select = envelope_select(InvoiceIssued, source="invoicing", subject="i", data={
        "customer_id": "c", "invoice_id": "i", "billing_source": "$3::text", "external_id": "e", "number": "n",
        "currency": "cur", "amount_minor": "a", "issue_date": "iss", "due_date": "due"})
    conn = await asyncpg.connect(database)
    try:
        row = await conn.fetchrow(
            f"SELECT {select} FROM (SELECT gen_random_uuid() AS eid, $4::text AS c, $5::text AS i, 'INV-1' AS e,"
            " '2026/1' AS n, 'EUR' AS cur, 12345::bigint AS a, DATE '2026-03-01' AS iss, DATE '2026-03-31' AS due) AS x",
            "acme", iso_time(now), "erp", "CUST-1", payload.invoice_id)
    finally:
        await conn.close()
    event_id, tenant, event_type, key, envelope_json = row
    built = Envelope.model_validate(json.loads(envelope_json))
    assert (tenant, event_type, key) == ("acme", "InvoiceIssued", expected.key)
    assert built.id == event_id and built.correlation_id == str(event_id)
    assert built.model_dump(exclude={"id", "correlation_id"}) == expected.model_dump(exclude={"id", "correlation_id"})
    assert built.payload() == payload


def test_sql_fields_must_be_the_model_fields() -> None:
    with pytest.raises(ValueError, match="differ from the model"):
        envelope_select(InvoiceIssued, source="invoicing", subject="i", data={"customer_id": "c"})
