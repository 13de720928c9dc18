"""Billing sources inside a tenant: each writes only what it may (invoices, payments), owns the
customer contact data it created, and reads only its own invoices."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from services.invoicing.bootstrap import build
from services.invoicing.settings import InvoicingSettings
from shared.clock import ManualClock
from tests.support import FAST_KAFKA, api_key, client, running

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 2, 9, 0, tzinfo=timezone.utc)


def customer(email: str = "ap@anadolu.example", **over) -> dict:
    return {"id": "C1", "name": "Anadolu Tekstil", "language": "tr", "timezone": "Europe/Istanbul",
            "email": email} | over


def invoice(external_id: str, **over) -> dict:
    return {"external_id": external_id, "customer_id": "C1", "amount_minor": 10_000, "currency": "EUR",
            "issue_date": "2026-02-01", "due_date": "2026-03-03"} | over


@pytest.fixture
async def tenant(database, kafka_bootstrap, topic_prefix):
    """Invoicing with three sources of t1 registered by its admin: erp (invoices), crm (invoices)
    and bank (payments only); yields the app, the base URL and each source's key."""
    settings = InvoicingSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap,
                                 topic_prefix=topic_prefix, kafka_partitions=2, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, ManualClock(T0))
    async with running(app) as url:
        keys = {"admin": await api_key(app, "t1", "admin")}
        async with client(url, keys["admin"]) as admin:
            for name, records in (("erp", None), ("crm", None), ("bank", ["payments"])):
                body = {"name": name, "default_currency": "EUR"} | ({"records": records} if records else {})
                r = await admin.post("/v1/billing-sources", json=body)
                assert r.status_code == 201, r.text
                keys[name] = r.json()["api_key"]
                assert r.json()["records"] == (records or ["invoices"])
        yield app, url, keys


async def test_recording_payments_is_a_permission_of_its_own(tenant):
    app, url, keys = tenant
    async with client(url, keys["erp"]) as erp, client(url, keys["bank"]) as bank, client(url, keys["admin"]) as admin:
        assert (await erp.post("/v1/invoices", json=invoice("E-1"))).status_code == 201
        payment = {"external_id": "P-1", "customer_id": "C1", "currency": "EUR", "amount_minor": 4_000}
        r = await erp.post("/v1/payments", json=payment)
        assert r.status_code == 403 and r.json()["problems"][0]["field"] == "billing_source"
        assert "may not record payments" in r.json()["problems"][0]["reason"]
        bulk = await erp.post("/v1/payments/bulk", json={"items": [payment]})
        assert bulk.json()["results"][0]["field"] == "billing_source"
        assert await app.state.pool.fetchval("SELECT count(*) FROM payments") == 0

        # A bank import records payments only, and its cash settles any source's invoices.
        r = await bank.post("/v1/invoices", json=invoice("B-1"))
        assert r.status_code == 403 and "may not record invoices" in r.json()["problems"][0]["reason"]
        assert (await bank.put("/v1/customers/C1", json=customer())).status_code == 403
        r = await bank.post("/v1/payments", json=payment)
        assert r.status_code == 201, r.text
        over = {"external_id": "P-9", "customer_id": "C9", "currency": "EUR", "amount_minor": 1_000}
        assert (await bank.post("/v1/payments", json=over)).status_code == 201  # nobody's: unapplied
        assert [u["external_id"] for u in (await bank.get("/v1/payments/unapplied")).json()] == ["P-9"]
        assert (await erp.get("/v1/payments/unapplied")).json() == []  # erp recorded none of it
        assert await app.state.pool.fetchval("SELECT open_minor FROM invoices WHERE external_id = 'E-1'") == 6_000

        # The tenant's admin grants erp payments too.
        r = await admin.patch("/v1/billing-sources/erp", json={"records": ["invoices", "payments"]})
        assert r.status_code == 200 and r.json()["records"] == ["invoices", "payments"]
        assert (await erp.post("/v1/payments", json=payment | {"external_id": "P-2"})).status_code == 201
        listed = (await admin.get("/v1/billing-sources")).json()
        assert {s["name"]: s["records"] for s in listed} == {
            "bank": ["payments"], "crm": ["invoices"], "erp": ["invoices", "payments"]}
        assert all("api_key" not in s for s in listed)


async def test_customer_contact_data_belongs_to_the_source_that_created_it(tenant):
    app, url, keys = tenant
    pool = app.state.pool
    async with client(url, keys["erp"]) as erp, client(url, keys["crm"]) as crm, client(url, keys["admin"]) as admin:
        assert (await erp.put("/v1/customers/C1", json=customer())).json()["status"] == "upserted"
        updated_at = await pool.fetchval("SELECT updated_at FROM customers WHERE customer_id = 'C1'")

        # crm sends other contact data: refused, naming the field and the owner; nothing written.
        r = await crm.put("/v1/customers/C1", json=customer("attacker@evil.example", phone="+905551112233"))
        assert r.status_code == 409, r.text
        problem = r.json()["problems"][0]
        assert problem["field"] == "email" and "belongs to billing source 'erp'" in problem["reason"]
        assert "email, phone" in problem["reason"]
        bulk = await crm.post("/v1/customers/bulk", json={"items": [customer("attacker@evil.example")]})
        assert bulk.json()["results"][0]["status"] == "rejected"
        # The same data from crm is no change at all.
        assert (await crm.put("/v1/customers/C1", json=customer())).json()["status"] == "unchanged"

        # An invoice of crm carrying other customer data is kept; the data is not, and it says so.
        r = await crm.post("/v1/invoices/bulk", json={"items": [
            invoice("CRM-1", customer=customer("attacker@evil.example"))]})
        [result] = r.json()["results"]
        assert result["status"] == "created" and "belongs to billing source 'erp'" in result["reason"]
        assert await pool.fetchval("SELECT email FROM customers WHERE customer_id = 'C1'") == "ap@anadolu.example"
        assert await pool.fetchval("SELECT updated_at FROM customers WHERE customer_id = 'C1'") == updated_at

        # The owner changes it.
        assert (await erp.put("/v1/customers/C1", json=customer("ar@anadolu.example"))).json()["status"] == "upserted"

        # A tenant that designates a master-data source: that source owns every customer.
        r = await admin.put("/v1/settings/master-data-source", json={"master_data_source": "crm"})
        assert r.status_code == 200
        r = await admin.put("/v1/settings/master-data-source", json={"master_data_source": "nope"})
        assert r.status_code == 404 and r.json()["problems"][0]["field"] == "master_data_source"
        assert (await admin.get("/v1/settings/master-data-source")).json() == {"master_data_source": "crm"}
        r = await erp.put("/v1/customers/C1", json=customer("erp@anadolu.example"))
        assert r.status_code == 409 and "'crm'" in r.json()["problems"][0]["reason"]
        assert (await crm.put("/v1/customers/C1", json=customer("crm@anadolu.example"))).json()["status"] == "upserted"
        assert await pool.fetchval("SELECT email FROM customers WHERE customer_id = 'C1'") == "crm@anadolu.example"


async def test_a_placeholder_customer_takes_the_data_of_whichever_source_sends_it_first(tenant):
    app, url, keys = tenant
    async with client(url, keys["erp"]) as erp, client(url, keys["crm"]) as crm:
        # erp names C1 without data: a placeholder nobody owns yet.
        assert (await erp.post("/v1/invoices", json=invoice("E-1"))).status_code == 201
        assert (await crm.put("/v1/customers/C1", json=customer())).json()["status"] == "upserted"
        r = await erp.put("/v1/customers/C1", json=customer("other@anadolu.example"))
        assert r.status_code == 409 and "'crm'" in r.json()["problems"][0]["reason"]


async def test_a_billing_source_reads_only_its_own_invoices(tenant):
    app, url, keys = tenant
    async with client(url, keys["erp"]) as erp, client(url, keys["crm"]) as crm:
        erp_invoice = (await erp.post("/v1/invoices", json=invoice("E-1"))).json()["id"]
        crm_invoice = (await crm.post("/v1/invoices", json=invoice("R-1", amount_minor=7_000))).json()["id"]
        assert (await erp.get(f"/v1/invoices/{erp_invoice}")).status_code == 200
        r = await erp.get(f"/v1/invoices/{crm_invoice}")
        assert r.status_code == 404
        aging = (await erp.get("/v1/reports/aging", params={"as_of": "2026-03-10"})).json()
        assert aging["by_currency"]["EUR"]["1-30"] == 10_000 and aging["by_currency"]["EUR"]["total"] == 10_000
        dso = (await crm.get("/v1/reports/dso", params={"as_of": "2026-03-10"})).json()
        assert dso["by_currency"]["EUR"]["ar_minor"] == 7_000
        # The customer's ledger holds every source's entries and cash: not for a billing source.
        assert (await erp.get("/v1/customers/C1/statement")).status_code == 403


async def test_a_billing_source_key_without_a_source_writes_nothing(tenant):
    app, url, keys = tenant
    unbound = await api_key(app, "t1", "billing-source")
    async with client(url, unbound) as http:
        r = await http.post("/v1/invoices", json=invoice("X-1", billing_source="erp"))
        assert r.status_code == 403 and r.json()["problems"][0]["field"] == "billing_source"
        r = await http.post("/v1/invoices", json=invoice("X-1", billing_source="unregistered"))
        assert r.status_code == 403
    async with client(url, keys["admin"]) as admin:
        r = await admin.post("/v1/invoices", json=invoice("X-1", billing_source="unregistered"))
        assert r.status_code == 403 and "not registered" in r.json()["problems"][0]["reason"]
    assert await app.state.pool.fetchval("SELECT count(*) FROM invoices") == 0
