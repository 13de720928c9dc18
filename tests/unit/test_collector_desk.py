"""The collector's desk without I/O: priority, working hours, assignment, outcome details, and
which events make which contact-log entries."""
from __future__ import annotations

import uuid
from datetime import date, datetime, time, timezone
from decimal import Decimal

import pytest

from services.dunning.domain.contact_log import entry_of
from services.dunning.domain.desk import (
    DEFAULT_GRADE_WEIGHTS, DeskError, Hours, Seat, ToPlace, assign, check_outcome, next_working_moment, priority,
)
from shared.contract import InvoiceIssued, PaymentReceived, PromiseToPayRecorded, new_envelope
from shared.contract.events import ContactLogged

UTC = timezone.utc


def test_priority_is_owed_times_days_times_the_grade_weight():
    assert priority(123_456, "EUR", 10, None, DEFAULT_GRADE_WEIGHTS) == 12_346  # 1,234.56 x 10, rounded
    assert priority(123_456, "EUR", 10, "D", DEFAULT_GRADE_WEIGHTS) == 24_691  # x 2
    assert priority(123_456, "EUR", 10, "A", DEFAULT_GRADE_WEIGHTS) == 6_173  # x 0.5 (6,172.8)
    assert priority(50_000, "EUR", 0, "B", DEFAULT_GRADE_WEIGHTS) == 500  # not yet overdue: one day
    assert priority(5_000, "JPY", 3, None, DEFAULT_GRADE_WEIGHTS) == 15_000  # no minor unit in yen
    assert priority(5_000, "KWD", 2, "C", {"C": Decimal("3")}) == 30  # 5.000 KWD (three decimals) x 2 x 3


def test_a_task_falls_due_in_its_collectors_working_hours():
    istanbul = Hours("Europe/Istanbul", time(9), time(17), (1, 2, 3, 4, 5))
    # Tuesday 20:00 UTC is 23:00 there: Wednesday 09:00 local
    assert next_working_moment(datetime(2026, 3, 10, 20, tzinfo=UTC), istanbul) == datetime(2026, 3, 11, 6, tzinfo=UTC)
    # within hours: as it is
    assert next_working_moment(datetime(2026, 3, 10, 8, tzinfo=UTC), istanbul) == datetime(2026, 3, 10, 8, tzinfo=UTC)
    # Friday evening: Monday morning
    assert next_working_moment(datetime(2026, 3, 13, 16, tzinfo=UTC), istanbul) == datetime(2026, 3, 16, 6, tzinfo=UTC)
    # before opening on a working day: that morning; across a DST change (Berlin, 29 March)
    berlin = Hours("Europe/Berlin", time(8), time(12), (1,))
    assert next_working_moment(datetime(2026, 3, 28, 12, tzinfo=UTC), berlin) == datetime(2026, 3, 30, 6, tzinfo=UTC)
    with pytest.raises(DeskError, match="time zone"):
        Hours("Mars/Olympus").check()
    with pytest.raises(DeskError, match="end after"):
        Hours("UTC", time(17), time(9)).check()
    with pytest.raises(DeskError):
        Hours("UTC", days=(0, 8)).check()


def _seats(**capacity):
    return [Seat(name, cap) for name, cap in capacity.items()]


def test_round_robin_takes_turns_among_those_with_room_and_queues_the_rest():
    tasks = [ToPlace(f"t{n}", f"C{n}") for n in range(5)]
    placed = assign(tasks, _seats(ali=1, bea=2), "round_robin")
    assert placed.assigned == {"t0": "ali", "t1": "bea", "t2": "bea"} and placed.waiting == ["t3", "t4"]
    # the cursor carries on where the last batch stopped
    placed = assign([ToPlace("x", "X"), ToPlace("y", "Y")], _seats(ali=9, bea=9, cem=9), "round_robin", cursor=2)
    assert placed.assigned == {"x": "cem", "y": "ali"} and placed.cursor == 1


def test_portfolio_gives_the_owner_their_customers_and_one_customer_one_collector():
    tasks = [ToPlace("t1", "C1", owner="bea"), ToPlace("t2", "C2"), ToPlace("t3", "C2"), ToPlace("t4", "C3", "gone")]
    placed = assign(tasks, _seats(ali=5, bea=5), "portfolio")
    assert placed.assigned == {"t1": "bea", "t2": "ali", "t3": "ali", "t4": "bea"}
    # an owner without room: someone else takes it; an inactive collector gets nothing
    seats = [Seat("ali", 5, active=False), Seat("bea", 1, open_tasks=1), Seat("cem", 5)]
    assert assign([ToPlace("t", "C", owner="bea")], seats, "portfolio").assigned == {"t": "cem"}
    assert assign(tasks, _seats(ali=5), "manual").waiting == ["t1", "t2", "t3", "t4"]


def test_an_outcome_needs_its_details_and_no_others():
    check_outcome("reached", [])
    check_outcome("promise_taken", ["promise"])
    check_outcome("call_back", ["call_back_at"])
    for outcome, given, field in (("promise_taken", [], "promise"), ("dispute_raised", [], "dispute"),
                                  ("plan_agreed", ["promise"], "plan"), ("reached", ["plan"], "plan"),
                                  ("bribed", [], "outcome")):
        with pytest.raises(DeskError) as e:
            check_outcome(outcome, given)
        assert e.value.field == field


def _env(payload, source="dunning"):
    return new_envelope(payload, source=source, tenant_id="t1", subject=payload.customer_id,
                        time=datetime(2026, 3, 1, tzinfo=UTC))


def test_interactions_become_entries_keyed_by_the_event_and_the_rest_nothing():
    now = datetime(2026, 3, 1, 10, tzinfo=UTC)
    paid = _env(PaymentReceived(customer_id="C1", payment_id="P", billing_source="erp", external_id="B-1",
                                currency="EUR", amount_minor=500, received_at=now), "invoicing")
    entry = entry_of(paid, PaymentReceived.model_validate(paid.data))
    assert (entry.entry_id, entry.kind, entry.actor, entry.amount_minor, entry.ref) == (paid.id, "payment", "erp", 500,
                                                                                       "B-1")
    promise = _env(PromiseToPayRecorded(customer_id="C1", promise_id="p", case_id="c", currency="EUR",
                                        amount_minor=700, promised_date=date(2026, 3, 9), channel="phone",
                                        taken_by="k1", invoice_ids=[], recorded_at=now))
    entry = entry_of(promise, PromiseToPayRecorded.model_validate(promise.data))
    assert (entry.kind, entry.actor, entry.channel, entry.detail["promised_date"]) == ("promise", "k1", "phone",
                                                                                       "2026-03-09")
    entry_id = uuid.uuid4()
    logged = _env(ContactLogged(customer_id="C1", entry_id=str(entry_id), kind="correction", note="fixed",
                                corrects=str(uuid.uuid4()), logged_by="k1", logged_at=now))
    entry = entry_of(logged, ContactLogged.model_validate(logged.data))
    assert entry.entry_id == entry_id and entry.kind == "correction" and entry.corrects is not None
    issued = _env(InvoiceIssued(customer_id="C1", invoice_id="i", billing_source="erp", external_id="x", number="n",
                                currency="EUR", amount_minor=1, issue_date=date(2026, 3, 1),
                                due_date=date(2026, 3, 1)), "invoicing")
    assert entry_of(issued, InvoiceIssued.model_validate(issued.data)) is None
