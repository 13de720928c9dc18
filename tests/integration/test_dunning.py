"""Dunning against real PostgreSQL and the real broker: events in, durable step timers,
NotificationRequested out, redelivery harmless, poison records dead-lettered."""
from __future__ import annotations

import json
from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest

from services.dunning.bootstrap import build
from services.dunning.settings import DunningSettings
from shared.clock import ManualClock
from shared.contract import CustomerUpserted, InvoiceIssued, InvoicePaid, PaymentReceived, Topics, new_envelope
from shared.contract.events import Allocation
from shared.kafka import start_producer
from tahsilat.streams import read_events, read_topic
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc)
DUE = date(2026, 3, 10)


@pytest.fixture
async def dunning(database, kafka_bootstrap, topic_prefix):
    clock = ManualClock(T0)
    settings = DunningSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                               kafka_partitions=2, poll_interval_seconds=0.1, **FAST_KAFKA)
    app = build(settings, clock)
    producer = await start_producer(kafka_bootstrap)
    async with running(app) as url:
        async with client(url, await api_key(app, "t1", "collector")) as http:
            yield app, http, clock, Topics(topic_prefix), producer
    await producer.stop()


def env(payload, subject, clock):
    return new_envelope(payload, source="invoicing", tenant_id="t1", subject=subject, time=clock.now())


async def send(producer, topic, *envelopes):
    for e in envelopes:
        await producer.send_and_wait(topic, e.model_dump_json().encode(), key=e.key.encode())


def issued(invoice_id: str, customer="C1", amount=50_000, due=DUE):
    return InvoiceIssued(customer_id=customer, invoice_id=invoice_id, billing_source="erp", external_id=f"X-{invoice_id[-4:]}",
                         number=f"N-{invoice_id[-4:]}", currency="EUR", amount_minor=amount,
                         issue_date=due - timedelta(days=30), due_date=due)


INV_A = "00000000-0000-0000-0000-00000000000a"
INV_B = "00000000-0000-0000-0000-00000000000b"


async def cases(http, **params):
    r = await http.get("/v1/cases", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def requested(kafka_bootstrap, topics):
    return [e for e in await read_events(kafka_bootstrap, topics.dunning) if e.type == "NotificationRequested"]


async def test_one_case_per_customer_and_currency_one_notice_per_step_listing_every_item(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    customer = env(CustomerUpserted(customer_id="C1", name="Globex", timezone="Europe/London"), "C1", clock)
    a, b = env(issued(INV_A), INV_A, clock), env(issued(INV_B), INV_B, clock)
    await send(producer, topics.invoicing, customer, a, b)
    found = await wait_for(lambda: _items(http, "C1", 2), message="one case with two items")
    case = found[0]
    assert len(found) == 1 and case["currency"] == "EUR"
    item_a = next(i for i in case["items"] if i["invoice_id"] == INV_A)
    assert [(s["step"], s["channel"], s["status"]) for s in item_a["steps"]][:2] == [
        ("pre_due", "email", "scheduled"), ("due", "email", "scheduled")]
    # 09:00 London on the due date minus 3 days.
    assert item_a["steps"][0]["due_at"] == "2026-03-07T09:00:00Z"
    assert case["next_due_at"] == "2026-03-07T09:00:00Z"

    clock.set(datetime(2026, 3, 7, 9, 1, tzinfo=timezone.utc))
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the pre-due notice")
    assert len(got) == 1  # one notice for both invoices
    notice = got[0].data
    assert (notice["case_id"], notice["step"], notice["channel"]) == (case["case_id"], "pre_due", "email")
    assert sorted(i["invoice_id"] for i in notice["items"]) == [INV_A, INV_B]
    assert all(i["open_amount_minor"] == 50_000 and i["days_overdue"] == 0 for i in notice["items"])

    # B is paid in full: it leaves the case. A is paid in part: the amount shrinks.
    payment = env(PaymentReceived(customer_id="C1", payment_id="P1", billing_source="erp", external_id="P1",
                                  currency="EUR", amount_minor=70_000, received_at=clock.now(),
                                  allocations=[Allocation(invoice_id=INV_B, amount_minor=50_000, invoice_open_minor=0),
                                               Allocation(invoice_id=INV_A, amount_minor=20_000, invoice_open_minor=30_000)]),
                  "P1", clock)
    await send(producer, topics.invoicing, payment)
    await wait_for(lambda: _item_status(http, INV_B, "settled"), message="B settled")

    clock.set(datetime(2026, 3, 17, 10, 0, tzinfo=timezone.utc))  # past +7: "due" is stale by now, skipped
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 3), message="+7 notices")
    clock.set(datetime(2026, 3, 25, 10, 0, tzinfo=timezone.utc))  # past +14
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 5), message="+14 notices")
    later = [e.data for e in got if e.data["step"] != "pre_due"]
    assert Counter((d["step"], d["channel"]) for d in later) == {
        ("overdue_7", "email"): 1, ("overdue_7_sms", "sms"): 1, ("final_14", "email"): 1, ("final_14_sms", "sms"): 1}
    assert all([(i["invoice_id"], i["open_amount_minor"]) for i in d["items"]] == [(INV_A, 30_000)] for d in later)
    assert [i["days_overdue"] for d in later if d["step"] == "final_14" for i in d["items"]] == [15]
    case = (await http.get(f"/v1/cases/{case['case_id']}")).json()
    item_b = next(i for i in case["items"] if i["invoice_id"] == INV_B)
    assert {s["status"] for s in item_b["steps"]} == {"executed", "cancelled"} and item_b["closed_reason"] == "paid"
    item_a = next(i for i in case["items"] if i["invoice_id"] == INV_A)
    assert {s["step"]: s["status"] for s in item_a["steps"]}["due"] == "skipped"
    assert [n["sequence"] for n in case["notices"]] == [1, 2, 3, 4, 5]


async def _items(http, customer_id, n):
    found = await cases(http, customer_id=customer_id)
    return found if found and len(found[0]["items"]) >= n else None


async def _n(coro, n):
    items = await coro
    return items if len(items) >= n else None


async def _case_of(http, invoice_id):
    found = await cases(http, invoice_id=invoice_id)
    return found[0] if found else None


async def _item_status(http, invoice_id, status):
    case = await _case_of(http, invoice_id)
    item = next((i for i in case["items"] if i["invoice_id"] == invoice_id), None) if case else None
    return item if item and item["status"] == status else None


async def _case_status(http, invoice_id, status):
    case = await _case_of(http, invoice_id)
    return case if case and case["status"] == status else None


async def test_redelivered_events_change_nothing(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    customer = env(CustomerUpserted(customer_id="C1", name="Globex"), "C1", clock)
    a = env(issued(INV_A), INV_A, clock)
    paid = env(InvoicePaid(customer_id="C1", invoice_id=INV_B, currency="EUR", amount_minor=1, due_date=DUE,
                           paid_at=clock.now(), days_late=0), INV_B, clock)
    await send(producer, topics.invoicing, customer, a, a, paid)
    clock.set(datetime(2026, 3, 7, 12, 0, tzinfo=timezone.utc))
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the pre-due request")
    # Redeliver everything (what a consumer restart before its commit would do), then a sentinel.
    sentinel = env(issued(INV_B, customer="C2"), INV_B, clock)
    await send(producer, topics.invoicing, customer, a, a, paid, sentinel)
    await wait_for(lambda: cases(http, customer_id="C2"), message="the sentinel case")

    pool = app.state.pool
    assert await pool.fetchval("SELECT count(*) FROM cases WHERE customer_id = 'C1'") == 1
    assert await pool.fetchval("SELECT count(*) FROM item_steps WHERE invoice_id = $1::uuid", INV_A) == 6
    assert await pool.fetchval("SELECT count(*) FROM inbox WHERE consumer = 'dunning.events'") == 4  # customer, A,
    # paid, sentinel
    got = await requested(kafka_bootstrap, topics)
    keys = [e.data["notification_key"] for e in got if e.data["customer_id"] == "C1"]
    case_id = (await _case_of(http, INV_A))["case_id"]
    assert keys == [f"{case_id}:pre_due:email:1"]


async def test_poison_records_go_to_the_dead_letter_topic_and_the_consumer_carries_on(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await producer.send_and_wait(topics.invoicing, b"{not json", key=b"t1:C1")
    broken = env(issued(INV_A), INV_A, clock).model_dump(mode="json")
    broken["data"]["amount_minor"] = -5
    await producer.send_and_wait(topics.invoicing, json.dumps(broken).encode(), key=b"t1:C1")
    await send(producer, topics.invoicing, env(issued(INV_B), INV_B, clock))
    await wait_for(lambda: cases(http, customer_id="C1"), message="the valid invoice after the poison")
    # both of dunning's consumers of the topic report the unreadable record; only the case
    # consumer reads InvoiceIssued (the contact log skips it unread)
    dead = await wait_for(lambda: _n(read_topic(kafka_bootstrap, topics.dead_letter), 3), message="three dead letters")
    reasons = sorted(h["dlq_reason"] for _, h in dead if h["dlq_consumer"] == "dunning.events")
    assert len(reasons) == 2
    assert reasons[0].startswith("invalid InvoiceIssued v1 payload: amount_minor")
    assert reasons[1].startswith("unreadable envelope")
    [contact_log] = [h for _, h in dead if h["dlq_consumer"] == "dunning.contact-log"]
    assert contact_log["dlq_reason"].startswith("unreadable envelope")
    assert all(h["dlq_original_topic"] == topics.invoicing for _, h in dead)


async def test_another_tenant_sees_no_cases(dunning):
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock))
    await wait_for(lambda: cases(http), message="a case")
    async with client(str(http.base_url), await api_key(app, "t2", "collector")) as other:
        assert (await other.get("/v1/cases")).json() == []
        assert (await other.get(f"/v1/cases/{(await _case_of(http, INV_A))['case_id']}")).status_code == 404
        assert (await other.get("/v1/cases", params={"invoice_id": INV_A})).json() == []
    async with client(str(http.base_url), await api_key(app, "t1", "billing-source")) as wrong_role:
        assert (await wrong_role.get("/v1/cases")).status_code == 403


async def test_after_downtime_only_the_latest_due_step_is_sent(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock))
    await wait_for(lambda: cases(http), message="the case")
    # The service "was down" from before the pre-due step until after the +7 step.
    clock.set(datetime(2026, 3, 18, 10, 0, tzinfo=timezone.utc))
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="the +7 requests")
    assert sorted((e.data["step"], e.data["channel"]) for e in got) == [("overdue_7", "email"), ("overdue_7_sms", "sms")]
    case = await _case_of(http, INV_A)
    assert {s["step"]: (s["status"], s["reason"]) for s in case["items"][0]["steps"]} == {
        "pre_due": ("skipped", "stale"), "due": ("skipped", "stale"), "overdue_7": ("executed", None),
        "overdue_7_sms": ("executed", None), "final_14": ("scheduled", None), "final_14_sms": ("scheduled", None)}
    assert [n["step"] for n in case["notices"]] == ["overdue_7", "overdue_7_sms"]


async def test_adjusted_due_date_moves_the_steps_and_a_cancelled_invoice_stops_dunning(dunning, kafka_bootstrap):
    from shared.contract import InvoiceAdjusted, InvoiceCancelled
    from shared.contract.events import FieldChange

    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock), env(issued(INV_B), INV_B, clock))
    await wait_for(lambda: _items(http, "C1", 2), message="one case with both invoices")
    moved = InvoiceAdjusted(customer_id="C1", invoice_id=INV_A, billing_source="erp", external_id="X-000a",
                            number="N-000a", currency="EUR", amount_minor=40_000, open_amount_minor=40_000,
                            issue_date=date(2026, 2, 8), due_date=date(2026, 3, 20),
                            changes={"due_date": FieldChange(old="2026-03-10", new="2026-03-20"),
                                     "amount_minor": FieldChange(old=50_000, new=40_000)})
    cancelled = InvoiceCancelled(customer_id="C1", invoice_id=INV_B, billing_source="erp", external_id="X-000b",
                                 number="N-000b", currency="EUR", cancelled_at=clock.now())
    await send(producer, topics.invoicing, env(moved, INV_A, clock), env(cancelled, INV_B, clock))
    item_b = await wait_for(lambda: _item_status(http, INV_B, "cancelled"), message="B cancelled")
    assert item_b["closed_reason"] == "cancelled" and {s["status"] for s in item_b["steps"]} == {"cancelled"}
    item_a = await wait_for(lambda: _due(http, INV_A, "2026-03-20"), message="A moved")
    assert item_a["open_minor"] == 40_000
    assert item_a["steps"][0]["due_at"] == "2026-03-17T09:00:00Z"  # pre-due, three days before the new date
    case = await _case_of(http, INV_A)
    assert case["status"] == "open" and case["open_minor"] == 40_000 and case["next_due_at"] == "2026-03-17T09:00:00Z"


async def _due(http, invoice_id, due_date):
    case = await _case_of(http, invoice_id)
    item = next(i for i in case["items"] if i["invoice_id"] == invoice_id)
    return item if item["due_date"] == due_date else None


async def test_a_reversed_payment_reopens_the_case_and_its_later_steps(dunning, kafka_bootstrap):
    from shared.contract import PaymentReversed

    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock))
    await wait_for(lambda: cases(http), message="the case")
    paid = PaymentReceived(customer_id="C1", payment_id="P1", billing_source="erp", external_id="P1", currency="EUR",
                           amount_minor=50_000, received_at=clock.now(),
                           allocations=[Allocation(invoice_id=INV_A, amount_minor=50_000, invoice_open_minor=0)])
    await send(producer, topics.invoicing, env(paid, "P1", clock))
    closed = await wait_for(lambda: _case_status(http, INV_A, "closed"), message="closed by the payment")
    assert closed["closed_reason"] == "paid"
    bounced = PaymentReversed(customer_id="C1", payment_id="P1", billing_source="erp", external_id="P1", currency="EUR",
                              amount_minor=50_000, reversed_at=clock.now(),
                              reopened=[Allocation(invoice_id=INV_A, amount_minor=50_000, invoice_open_minor=50_000)])
    await send(producer, topics.invoicing, env(bounced, "P1", clock))
    case = await wait_for(lambda: _case_status(http, INV_A, "open"), message="re-opened by the reversal")
    assert case["case_id"] != closed["case_id"]  # the closed case stays closed; the customer's new case holds it
    item = case["items"][0]
    assert case["open_minor"] == 50_000 and item["round"] == 1
    assert {s["status"] for s in item["steps"] if s["round"] == 0} == {"cancelled"}
    assert {s["status"] for s in item["steps"] if s["round"] == 1} == {"scheduled"}


async def test_an_invoice_reopened_after_its_last_step_is_dunned_again(dunning, kafka_bootstrap):
    """Every step had passed when the payment bounced: the customer still hears that they owe,
    once (the latest step again, in a new round with its own notification key)."""
    from shared.contract import PaymentReversed

    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock))
    await wait_for(lambda: cases(http), message="the case")
    clock.set(datetime(2026, 3, 25, 10, 0, tzinfo=timezone.utc))  # past the final +14 step
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="the final notices")
    paid = PaymentReceived(customer_id="C1", payment_id="P1", billing_source="erp", external_id="P1", currency="EUR",
                           amount_minor=50_000, received_at=clock.now(),
                           allocations=[Allocation(invoice_id=INV_A, amount_minor=50_000, invoice_open_minor=0)])
    await send(producer, topics.invoicing, env(paid, "P1", clock))
    first = await wait_for(lambda: _case_status(http, INV_A, "closed"), message="closed by the payment")
    clock.set(datetime(2026, 3, 26, 10, 0, tzinfo=timezone.utc))
    bounced = PaymentReversed(customer_id="C1", payment_id="P1", billing_source="erp", external_id="P1", currency="EUR",
                              amount_minor=50_000, reversed_at=clock.now(),
                              reopened=[Allocation(invoice_id=INV_A, amount_minor=50_000, invoice_open_minor=50_000)])
    await send(producer, topics.invoicing, env(bounced, "P1", clock), env(bounced, "P1", clock))
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 4), message="the final notices again")
    case = await _case_of(http, INV_A)
    keys = Counter(e.data["notification_key"] for e in got)
    assert keys == {f"{first['case_id']}:final_14:email:1": 1, f"{first['case_id']}:final_14_sms:sms:2": 1,
                    f"{case['case_id']}:final_14:email:1": 1, f"{case['case_id']}:final_14_sms:sms:2": 1}
    assert case["status"] == "open" and case["items"][0]["round"] == 1


async def test_a_redelivered_event_whose_handler_publishes_publishes_once(dunning, kafka_bootstrap):
    """The inbox, not luck: a balance confirmation handled twice would ask for two emails."""
    from shared.contract import BalanceConfirmationRequested
    from shared.contract.events import Balance

    app, http, clock, topics, producer = dunning
    request = env(BalanceConfirmationRequested(
        customer_id="C1", confirmation_id="BC-1", as_of=date(2026, 3, 1),
        balances=[Balance(currency="EUR", balance_minor=50_000)], items=[], confirm_url="https://x/confirm",
        contest_url="https://x/contest", requested_at=clock.now()), "BC-1", clock)
    await send(producer, topics.invoicing, request, request)
    sentinel = env(issued(INV_B, customer="C1"), INV_B, clock)
    await send(producer, topics.invoicing, request, sentinel)  # again, in a later batch too
    await wait_for(lambda: cases(http, customer_id="C1"), message="the sentinel case")
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 0 FROM outbox"), message="all published")
    got = await requested(kafka_bootstrap, topics)
    assert [e.data["notification_key"] for e in got] == ["BC-1:balance_confirmation:email"]


async def test_a_dispute_pauses_dunning_until_a_collector_resolves_it_or_its_pause_runs_out(dunning, kafka_bootstrap):
    """#8: one unanswered contest must not stop collection for ever."""
    from shared.contract import BalanceContested

    app, http, clock, topics, producer = dunning
    inv_c = "00000000-0000-0000-0000-00000000000c"
    await send(producer, topics.invoicing, *(env(issued(i, customer=c), i, clock)
                                             for i, c in ((INV_A, "C1"), (INV_B, "C2"), (inv_c, "C3"))))
    await wait_for(lambda: _n(cases(http), 3), message="three cases")
    await send(producer, topics.invoicing, *(env(BalanceContested(
        customer_id=c, confirmation_id=f"00000000-0000-0000-0000-0000000000{n}1", as_of=date(2026, 3, 1),
        reason="already paid", contested_at=clock.now()), c, clock) for n, c in ((1, "C1"), (2, "C2"))))
    disputes = await wait_for(lambda: _n(_disputes(http), 2), message="two disputes")
    assert {d["pause_until"][:10] for d in disputes} == {"2026-03-31"}  # DISPUTE_PAUSE_DAYS after the contest

    clock.set(datetime(2026, 3, 18, 10, 0, tzinfo=timezone.utc))  # overdue_7 due for all three
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 2), message="the undisputed customer's requests")
    got = await requested(kafka_bootstrap, topics)
    assert {e.data["customer_id"] for e in got} == {"C3"}  # C1 and C2 are paused

    c1 = next(d for d in disputes if d["customer_id"] == "C1")
    r = await http.post(f"/v1/disputes/{c1['dispute_id']}/resolve", json={"resolution": "payment not found; invoice stands"})
    assert r.status_code == 200 and r.json()["status"] == "resolved", r.text
    assert r.json()["resolution"] == "payment not found; invoice stands" and r.json()["resolved_by"]
    again = await http.post(f"/v1/disputes/{c1['dispute_id']}/resolve", json={"resolution": "twice"})
    assert again.status_code == 409
    unknown = await http.post("/v1/disputes/00000000-0000-0000-0000-000000000000/resolve", json={"resolution": "none"})
    assert unknown.status_code == 404
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 4), message="C1 dunned again")
    assert Counter(e.data["customer_id"] for e in got) == {"C3": 2, "C1": 2}
    resolved = [e for e in await read_events(kafka_bootstrap, topics.dunning) if e.type == "DisputeResolved"]
    assert [e.data["dispute_id"] for e in resolved] == [c1["dispute_id"]]

    clock.set(datetime(2026, 4, 1, 10, 0, tzinfo=timezone.utc))  # C2's pause has run out, nobody resolved it
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 6), message="C2 dunned after the pause")
    c2 = sorted((e.data["step"], e.data["channel"]) for e in got if e.data["customer_id"] == "C2")
    assert c2 == [("final_14", "email"), ("final_14_sms", "sms")]  # only the latest step, no burst of stale ones


async def _disputes(http):
    r = await http.get("/v1/disputes")
    assert r.status_code == 200, r.text
    return r.json()
