"""The dunning engine against real PostgreSQL and the broker: policies through the API (validated,
versioned, activated with re-planning), risk segments, holds and "do not chase", fees and
statutory interest charged once, and two workers sharing the timers exactly once."""
from __future__ import annotations

from collections import Counter
from datetime import date, datetime, timedelta, timezone

import pytest

from services.dunning.bootstrap import build
from services.dunning.settings import DunningSettings
from shared.contract import CustomerUpserted, RiskAssessed
from shared.contract.events import RiskFactor
from tahsilat.streams import read_events
from tests.integration.test_dunning import (  # noqa: F401 - the fixture
    DUE, INV_A, INV_B, _case_of, _items, _n, cases, dunning, env, issued, requested, send,
)
from tests.support import FAST_KAFKA, api_key, client, running, wait_for

pytestmark = pytest.mark.integration

B2B_EU = """\
name: b2b-eu
segment: medium
languages: [en, tr]
charges: {jurisdiction: eu-2011-7}
steps:
  - {name: due, offset_days: 0, channel: email, template: reminder_due}
  - name: overdue_14
    offset_days: 14
    channel: email
    template: reminder_overdue
    fee: {EUR: "5.00"}
  - {name: final_30, offset_days: 30, channel: email, template: final_notice, fee: {EUR: "10.00"},
     min_overdue: {EUR: "100.00"}}
"""


async def _admin(app, http):
    return client(str(http.base_url), await api_key(app, "t1", "admin"))


async def test_a_policy_with_errors_is_refused_naming_line_and_field(dunning):
    app, http, clock, topics, producer = dunning
    bad = B2B_EU.replace("channel: email\n    template: reminder_overdue", "channel: fax\n    template: reminder_overdue")
    async with await _admin(app, http) as admin:
        r = await admin.post("/v1/policies", json={"source": bad})
        assert r.status_code == 422
        assert "source line 9, steps.1.channel" in r.text, r.text
        r = await admin.post("/v1/policies", json={"source": B2B_EU.replace('EUR: "5.00"', 'XYZ: "5.00"')})
        assert r.status_code == 422 and "steps.1.fee" in r.text and "XYZ" in r.text, r.text
        r = await admin.post("/v1/policies", json={"source": B2B_EU.replace("offset_days: 14", "offset_days: -4")})
        assert r.status_code == 422 and "steps must be in order" in r.text, r.text
        r = await admin.post("/v1/policies", json={"source": B2B_EU.replace("[en, tr]", "[en, xx]")})
        assert r.status_code == 422 and "languages.1" in r.text, r.text
        r = await admin.post("/v1/policies", json={"source": B2B_EU.replace("eu-2011-7", "mars")})
        assert r.status_code == 422 and "charges.jurisdiction" in r.text, r.text
        assert (await admin.get("/v1/policies", params={"status": "draft"})).json() == []
    # a collector reads policies but does not write them
    assert (await http.post("/v1/policies", json={"source": B2B_EU})).status_code == 403


async def test_activating_a_version_replans_only_the_future_steps_of_open_cases(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock))
    await wait_for(lambda: _items(http, "C1", 1), message="the case")
    clock.set(datetime(2026, 3, 7, 9, 30, tzinfo=timezone.utc))  # the standard pre-due step goes out
    await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the pre-due notice")

    async with await _admin(app, http) as admin:
        r = await admin.post("/v1/policies", json={"source": B2B_EU})
        assert r.status_code == 201, r.text
        assert (r.json()["version"], r.json()["status"], r.json()["tenant_id"]) == (1, "draft", "t1")
        # a draft changes nothing
        item = (await _case_of(http, INV_A))["items"][0]
        assert item["policy"] == "standard@1"
        r = await admin.post("/v1/policies/b2b-eu/versions/1/activate")
        assert r.status_code == 200 and r.json()["status"] == "active", r.text
        item = (await _case_of(http, INV_A))["items"][0]
        assert item["policy"] == "b2b-eu@1"
        steps = {s["step"]: (s["status"], s["reason"]) for s in item["steps"]}
        assert steps["pre_due"] == ("executed", None)  # what was sent stays sent
        assert steps["due"] == ("scheduled", None) and steps["overdue_14"] == ("scheduled", None)
        assert "overdue_7" not in steps and "final_14" not in steps  # the old plan's future steps are gone

        # a second version: listed, and activating it retires the first
        r = await admin.put("/v1/policies/b2b-eu", json={"source": B2B_EU.replace("offset_days: 14", "offset_days: 10"),
                                                         "activate": True})
        assert r.status_code == 201 and r.json()["version"] == 2, r.text
        versions = (await admin.get("/v1/policies/b2b-eu/versions")).json()
        assert [(v["version"], v["status"]) for v in versions] == [(2, "active"), (1, "retired")]
        assert (await admin.put("/v1/policies/other", json={"source": B2B_EU})).status_code == 422
        assert (await admin.post("/v1/policies/b2b-eu/versions/9/activate")).status_code == 404
    item = (await _case_of(http, INV_A))["items"][0]
    assert item["policy"] == "b2b-eu@2"
    assert {s["step"]: s["offset_days"] for s in item["steps"] if s["status"] == "scheduled"}["overdue_14"] == 10
    # another tenant still has the shipped policies only
    async with client(str(http.base_url), await api_key(app, "t2", "collector")) as other:
        assert {p["name"] for p in (await other.get("/v1/policies")).json()} == {"gentle", "standard", "strict"}


async def test_a_customer_moving_to_the_high_risk_segment_gets_the_strict_schedule(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock))
    await wait_for(lambda: _items(http, "C1", 1), message="the case")
    assessed = RiskAssessed(customer_id="C1", score=80, segment="high", assessed_at=clock.now(),
                            factors=[RiskFactor(name="late", value=3, points=80, explanation="3 late")])
    await send(producer, topics.risk, env(assessed, "C1", clock))

    async def strict():
        item = (await _case_of(http, INV_A))["items"][0]
        return item if item["policy"].startswith("strict@") else None

    item = await wait_for(strict, message="re-planned on the strict policy")
    assert "overdue_3" in {s["step"] for s in item["steps"] if s["status"] == "scheduled"}


async def test_holds_and_do_not_chase_pause_dunning_and_lifting_them_resumes_with_the_latest_step(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock), env(issued(INV_B), INV_B, clock))
    await wait_for(lambda: _items(http, "C1", 2), message="the case")
    r = await http.put(f"/v1/invoices/{INV_A}/hold", json={"reason": "credit note on its way"})
    assert r.status_code == 200 and r.json()["hold_reason"] == "credit note on its way" and r.json()["hold_by"], r.text
    assert (await http.put(f"/v1/invoices/{INV_A}/hold", json={"reason": "x"})).status_code == 422  # too short
    assert (await http.put("/v1/invoices/00000000-0000-0000-0000-000000000099/hold",
                           json={"reason": "unknown"})).status_code == 404

    clock.set(datetime(2026, 3, 7, 9, 30, tzinfo=timezone.utc))
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 1), message="the pre-due notice")
    assert [i["invoice_id"] for i in got[0].data["items"]] == [INV_B]  # the held invoice is not listed

    r = await http.put("/v1/customers/C1/do-not-chase", json={"reason": "insolvency proceedings"})
    assert r.status_code == 200 and r.json()["do_not_chase_reason"] == "insolvency proceedings", r.text
    clock.set(datetime(2026, 3, 18, 10, 0, tzinfo=timezone.utc))  # +7 due for both
    case = await _case_of(http, INV_A)
    assert case["next_due_at"] is None  # nothing can fall due while the customer is not chased
    assert await app.state.dunning.claim_due_steps() == 0

    # the hold first: while the customer is not chased nothing moves
    assert (await http.delete(f"/v1/invoices/{INV_A}/hold")).json()["hold_reason"] is None
    assert await app.state.dunning.claim_due_steps() == 0
    assert (await http.delete("/v1/customers/C1/do-not-chase")).json()["do_not_chase_reason"] is None
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 3), message="the +7 notices")
    later = [e.data for e in got[1:]]
    assert sorted((d["step"], d["channel"]) for d in later) == [("overdue_7", "email"), ("overdue_7_sms", "sms")]
    assert all(sorted(i["invoice_id"] for i in d["items"]) == [INV_A, INV_B] for d in later)
    # the held invoice's stale steps were skipped, not sent late
    item_a = next(i for i in (await _case_of(http, INV_A))["items"] if i["invoice_id"] == INV_A)
    assert {s["step"]: s["status"] for s in item_a["steps"]}["due"] == "skipped"


async def _eu_invoice_of_10000(dunning) -> None:
    """The B2B_EU policy active, and INV_A (10,000.00 EUR, due 2026-03-10) in a case."""
    app, http, clock, topics, producer = dunning
    async with await _admin(app, http) as admin:
        assert (await admin.post("/v1/policies", json={"source": B2B_EU, "activate": True})).status_code == 201
    await send(producer, topics.invoicing, env(CustomerUpserted(customer_id="C1", name="Globex"), "C1", clock),
               env(issued(INV_A, amount=1_000_000), INV_A, clock))
    await wait_for(lambda: _items(http, "C1", 1), message="the case")


async def test_fees_compensation_and_interest_are_charged_once_per_invoice_and_step(dunning, kafka_bootstrap):
    """10,000.00 EUR due 2026-03-10 under 2011/7/EU (ECB 2.15 + 8 = 10.15 % from 2026-01-01):
    +14 (2026-03-24): fee 5.00, compensation 40.00, interest 13 days (11th to 23rd March):
      1,000,000 x 0.1015 x 13 / 365 = 3,615.07 -> 3,615 minor;
    +30 (2026-04-09): fee 10.00, interest 16 days (24th March to 8th April):
      1,000,000 x 0.1015 x 16 / 365 = 4,449.32 -> 4,449 minor; no second compensation."""
    app, http, clock, topics, producer = dunning
    await _eu_invoice_of_10000(dunning)
    for day, n in ((date(2026, 3, 10), 1), (date(2026, 3, 24), 2), (date(2026, 4, 9), 3)):
        clock.set(datetime.combine(day, datetime.min.time(), timezone.utc) + timedelta(hours=9, minutes=5))
        got = await wait_for(lambda n=n: _n(requested(kafka_bootstrap, topics), n), message=f"notice {n}")
        # a scheduler tick again, and again: nothing more is charged or sent
        await app.state.dunning.claim_due_steps()
        await app.state.dunning.claim_due_steps()
    notices = [e.data for e in got]
    assert [n["step"] for n in notices] == ["due", "overdue_14", "final_30"]
    lines = [n["items"][0] for n in notices]
    assert [(x["fees_minor"], x["interest_minor"], x["days_overdue"]) for x in lines] == [
        (0, 0, 0), (500 + 4_000, 3_615, 14), (500 + 4_000 + 1_000, 3_615 + 4_449, 30)]

    events = await wait_for(lambda: _charge_events(kafka_bootstrap, topics, 5), message="the charge events")
    fees = sorted((e.data["fee_id"].split(":")[0], e.data["amount_minor"]) for e in events if e.type == "LateFeeAssessed")
    assert fees == [("compensation", 4_000), ("fee", 500), ("fee", 1_000)]
    accrued = [e.data for e in events if e.type == "InterestAccrued"]
    assert [(a["amount_minor"], a["periods"][0]["start"], a["periods"][-1]["end"], a["periods"][0]["annual_rate"])
            for a in accrued] == [(3_615, "2026-03-11", "2026-03-24", "10.15"), (4_449, "2026-03-24", "2026-04-09", "10.15")]
    assert Counter(e.id for e in events).most_common(1)[0][1] == 1
    case = await _case_of(http, INV_A)
    assert len(case["charges"]) == 5 and sum(c["amount_minor"] for c in case["charges"]) == 500 + 4_000 + 1_000 + 8_064


async def test_a_step_below_its_minimum_is_skipped(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    async with await _admin(app, http) as admin:
        assert (await admin.post("/v1/policies", json={"source": B2B_EU, "activate": True})).status_code == 201
    await send(producer, topics.invoicing, env(issued(INV_A, amount=5_000), INV_A, clock))  # 50.00 < 100.00
    await wait_for(lambda: _items(http, "C1", 1), message="the case")
    clock.set(datetime(2026, 4, 9, 9, 30, tzinfo=timezone.utc))
    await wait_for(lambda: _closed_timer(http), message="the final step decided")
    item = (await _case_of(http, INV_A))["items"][0]
    assert {s["step"]: (s["status"], s["reason"]) for s in item["steps"]} == {
        "due": ("skipped", "stale"), "overdue_14": ("skipped", "stale"), "final_30": ("skipped", "below_minimum")}
    assert await requested(kafka_bootstrap, topics) == []


async def _closed_timer(http):
    case = await _case_of(http, INV_A)
    return case if case and case["next_due_at"] is None else None


async def _charge_events(kafka_bootstrap, topics, n):
    events = [e for e in await read_events(kafka_bootstrap, topics.dunning)
              if e.type in ("LateFeeAssessed", "InterestAccrued")]
    return events if len(events) >= n else None


async def test_two_workers_and_a_worker_stopping_midway_request_each_notice_exactly_once(
        database, kafka_bootstrap, topic_prefix):
    """Two dunning workers on one database share the timers (SKIP LOCKED) and the partitions;
    one stops in the middle (its partitions move to the other). Every notice is requested once."""
    from shared.clock import ManualClock
    from shared.kafka import start_producer
    from shared.contract import Topics

    clock = ManualClock(datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc))
    settings = DunningSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                               kafka_partitions=4, poll_interval_seconds=0.05, step_batch_size=7, **FAST_KAFKA)
    topics = Topics(topic_prefix)
    producer = await start_producer(kafka_bootstrap)
    first, second = build(settings, clock), build(settings, clock)
    customers = 60
    try:
        async with running(first) as url1:
            async with running(second):
                invoices = [(f"C{n}", f"00000000-0000-0000-0001-{n:012d}", DUE + timedelta(days=n % 3))
                            for n in range(customers)]
                invoices += [(c, f"00000000-0000-0000-0002-{n:012d}", due) for n, (c, _, due) in enumerate(invoices)]
                await send(producer, topics.invoicing, *(env(issued(i, customer=c, due=due), i, clock)
                                                         for c, i, due in invoices))
                async with client(url1, await api_key(first, "t1", "collector")) as http:
                    await wait_for(lambda: _all_items(http, len(invoices)), 60, message="every invoice in a case")
                clock.set(datetime(2026, 3, 9, 9, 30, tzinfo=timezone.utc))  # pre-due for everyone
                await wait_for(lambda: _n(requested(kafka_bootstrap, topics), customers), 60, message="first notices")
                clock.set(datetime(2026, 3, 20, 9, 30, tzinfo=timezone.utc))  # +7 for everyone
            # the second worker is gone; the first takes its partitions and its timers
            await wait_for(lambda: _settled(first, clock), 60, message="the first worker alone finishes")
            clock.set(datetime(2026, 3, 30, 9, 30, tzinfo=timezone.utc))  # +14 for everyone
            await wait_for(lambda: _settled(first, clock), 60, message="the final notices")
            await wait_for(lambda: first.state.pool.fetchval("SELECT count(*) = 0 FROM outbox"), message="published")
            notices = await first.state.pool.fetch("SELECT notification_key FROM notices")
    finally:
        await producer.stop()
    got = await requested(kafka_bootstrap, topics)
    # a relay stopped between publishing and recording it publishes that batch again (at least
    # once; consumers drop the copies by event id): one event per notice, however often delivered
    keys = Counter(e.data["notification_key"] for e in {e.id: e for e in got}.values())
    assert set(keys) == {n["notification_key"] for n in notices}
    assert max(keys.values()) == 1, keys.most_common(3)
    # one notice per customer per step and channel: pre-due/due, +7 email and SMS, +14 email and SMS
    assert len(notices) == customers * 5


async def _all_items(http, n):
    r = await http.get("/v1/cases", params={"limit": 1000})
    return sum(len(c["items"]) for c in r.json()) >= n


async def _settled(app, clock):
    return await app.state.pool.fetchval(
        "SELECT count(*) = 0 FROM cases WHERE status = 'open' AND next_due_at <= $1", clock.now())


async def test_a_dry_run_says_what_goes_out_on_a_day_and_sends_nothing(dunning, kafka_bootstrap):
    app, http, clock, topics, producer = dunning
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock), env(issued(INV_B, customer="C2",
                                                                                       due=DUE + timedelta(days=2)),
                                                                                INV_B, clock))
    await wait_for(lambda: _n(cases(http), 2), message="two cases")
    r = await http.get("/v1/dunning/plan", params={"date": "2026-03-17"})  # A's +7; B is at +5: nothing
    assert r.status_code == 200, r.text
    assert sorted((n["customer_id"], n["step"], n["channel"], n["total_minor"]) for n in r.json()) == [
        ("C1", "overdue_7", "email", 50_000), ("C1", "overdue_7_sms", "sms", 50_000)]
    assert r.json()[0]["items"][0]["days_overdue"] == 7 and r.json()[0]["at"] == "2026-03-17T09:00:00Z"
    r = await http.get("/v1/dunning/plan", params={"date": "2026-03-09"})
    assert [(n["customer_id"], n["step"]) for n in r.json()] == [("C2", "pre_due")]
    # nothing happened: no notice, no event, the timers as they were
    assert await app.state.pool.fetchval("SELECT count(*) FROM notices") == 0
    assert await app.state.pool.fetchval("SELECT count(*) FROM item_steps WHERE status <> 'scheduled'") == 0
    assert await requested(kafka_bootstrap, topics) == []
    assert (await http.get("/v1/dunning/plan", params={"date": "2026-02-01"})).status_code == 422  # the past
    assert (await http.get("/v1/dunning/plan", params={"date": "tomorrow"})).status_code == 422


async def test_a_backtest_reports_notices_per_step_and_what_was_paid_within_7_days(dunning, kafka_bootstrap):
    """History: A (500.00) paid 2026-03-12 (2 days after due), B (500.00) never paid, C of
    another customer (500.00) paid 200.00 on 2026-03-20 (3 days after its +7 step)."""
    from shared.contract import PaymentReceived
    from shared.contract.events import Allocation

    app, http, clock, topics, producer = dunning
    inv_c = "00000000-0000-0000-0000-00000000000c"
    await send(producer, topics.invoicing, env(issued(INV_A), INV_A, clock), env(issued(INV_B), INV_B, clock),
               env(issued(inv_c, customer="C2"), inv_c, clock))
    await wait_for(lambda: _n(cases(http), 2), message="two cases")

    def paid(payment_id, customer, invoice, amount, left, day):
        return env(PaymentReceived(
            customer_id=customer, payment_id=payment_id, billing_source="erp", external_id=payment_id, currency="EUR",
            amount_minor=amount, received_at=datetime.combine(day, datetime.min.time(), timezone.utc),
            allocations=[Allocation(invoice_id=invoice, amount_minor=amount, invoice_open_minor=left)]), payment_id, clock)

    await send(producer, topics.invoicing, paid("P1", "C1", INV_A, 50_000, 0, date(2026, 3, 12)),
               paid("P2", "C2", inv_c, 20_000, 30_000, date(2026, 3, 20)))
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 2 FROM item_payments"), message="payments")
    r = await http.post("/v1/policies/backtest", json={"name": "standard", "first_due": "2026-03-01",
                                                       "last_due": "2026-03-31"})
    assert r.status_code == 200, r.text
    by_step = {s["step"]: s for s in r.json()}
    assert (by_step["pre_due"]["notices"], by_step["pre_due"]["invoices"]) == (2, 3)  # C1's two in one notice
    assert by_step["due"]["paid_within_7_days"] == {"EUR": 50_000}  # A, two days after the due-date reminder
    assert (by_step["overdue_7"]["notices"], by_step["overdue_7"]["invoices"]) == (2, 2)  # A is paid by then
    assert by_step["overdue_7"]["open_at_step"] == {"EUR": 100_000}
    assert by_step["overdue_7"]["paid_within_7_days"] == {"EUR": 20_000}
    assert by_step["final_14"]["open_at_step"] == {"EUR": 80_000}
    # an unsaved policy from YAML, and the errors
    r = await http.post("/v1/policies/backtest", json={"source": B2B_EU, "first_due": "2026-03-01",
                                                       "last_due": "2026-03-31"})
    assert [s["step"] for s in r.json()] == ["due", "overdue_14", "final_30"]
    assert (await http.post("/v1/policies/backtest", json={"first_due": "2026-03-01",
                                                           "last_due": "2026-03-31"})).status_code == 422
    assert (await http.post("/v1/policies/backtest", json={"name": "nope", "first_due": "2026-03-01",
                                                           "last_due": "2026-03-31"})).status_code == 404


async def test_policy_files_load_at_start_and_a_bad_one_stops_the_start_naming_file_and_line(
        database, kafka_bootstrap, topic_prefix, tmp_path):
    from services.dunning.domain.policy import PolicyError
    from shared.clock import ManualClock

    clock = ManualClock(datetime(2026, 3, 1, 10, 0, tzinfo=timezone.utc))
    (tmp_path / "b2b.yaml").write_text(B2B_EU.replace("segment: medium", "segment: low"))
    settings = DunningSettings(database_url=database, kafka_bootstrap_servers=kafka_bootstrap, topic_prefix=topic_prefix,
                               dunning_policy_dir=tmp_path, **FAST_KAFKA)
    app = build(settings, clock)
    async with running(app) as url:
        async with client(url, await api_key(app, "t9", "collector")) as http:
            active = {(p["tenant_id"], p["name"], p["segment"]) for p in (await http.get(
                "/v1/policies", params={"status": "active"})).json()}
    # the operator's file replaces the shipped policy of its segment for every tenant
    assert active == {("*", "b2b-eu", "low"), ("*", "standard", "medium"), ("*", "strict", "high")}

    (tmp_path / "b2b.yaml").write_text(B2B_EU.replace("offset_days: 14", "offset_days: 12"))
    (tmp_path / "broken.yaml").write_text(B2B_EU.replace("name: b2b-eu", "name: broken").replace(
        "channel: email\n    template: reminder_overdue", "channel: pigeon\n    template: reminder_overdue"))
    broken = build(settings, clock)
    with pytest.raises(PolicyError, match=r"broken.yaml line 9, steps.1.channel"):
        async with broken.router.lifespan_context(broken):  # the start itself, without a web server
            pass


async def test_interest_follows_what_was_owed_each_day_when_part_is_paid_inside_the_span(dunning, kafka_bootstrap):
    """As above, with 4,000.00 paid on 2026-03-31, between the +14 and the +30 steps. At +30 the
    16 days split: 7 days (24th to 30th March) on 10,000.00, 9 days (31st March to 8th April) on
    6,000.00: (1,000,000 x 7 + 600,000 x 9) x 0.1015 / 365 = 3,448.22 -> 3,448 minor (not 2,669,
    all 16 days on what is open at the step, nor 4,449 on the whole amount)."""
    from shared.contract import PaymentReceived
    from shared.contract.events import Allocation

    app, http, clock, topics, producer = dunning
    await _eu_invoice_of_10000(dunning)
    for day, n in ((date(2026, 3, 10), 1), (date(2026, 3, 24), 2)):
        clock.set(datetime.combine(day, datetime.min.time(), timezone.utc) + timedelta(hours=9, minutes=5))
        await wait_for(lambda n=n: _n(requested(kafka_bootstrap, topics), n), message=f"notice {n}")
    paid_at = datetime(2026, 3, 31, 15, tzinfo=timezone.utc)
    await send(producer, topics.invoicing, env(PaymentReceived(
        customer_id="C1", payment_id="P1", billing_source="erp", external_id="P1", currency="EUR",
        amount_minor=400_000, received_at=paid_at,
        allocations=[Allocation(invoice_id=INV_A, amount_minor=400_000, invoice_open_minor=600_000)]), "P1", clock))
    await wait_for(lambda: app.state.pool.fetchval("SELECT count(*) = 1 FROM item_payments"), message="the payment")
    clock.set(datetime(2026, 4, 9, 9, 5, tzinfo=timezone.utc))
    got = await wait_for(lambda: _n(requested(kafka_bootstrap, topics), 3), message="the +30 notice")
    assert got[-1].data["items"][0]["interest_minor"] == 3_615 + 3_448
    events = await wait_for(lambda: _charge_events(kafka_bootstrap, topics, 5), message="the charge events")
    last = [e.data for e in events if e.type == "InterestAccrued"][-1]
    assert last["amount_minor"] == 3_448
    assert [(p["start"], p["end"], p["days"], p["principal_minor"]) for p in last["periods"]] == [
        ("2026-03-24", "2026-03-31", 7, 1_000_000), ("2026-03-31", "2026-04-09", 9, 600_000)]
