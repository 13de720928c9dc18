"""Early warnings, the pure part: every signal rule on hand-computed cases and at its boundaries,
and the window arithmetic the database decision uses held against faust's window classes."""
from __future__ import annotations

import json
import random
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pytest
from faust.windows import HoppingWindow, TumblingWindow, _PyHoppingWindow

from services.risk.domain.warnings import (
    BOUNCE_WINDOW, DELAY_WINDOW, EXPOSURE_WINDOW, OBSERVED_EVENTS, PROMISE_VIEW, REVERSAL_VIEW, Fact, Window,
    WindowSpec, contacts_bouncing, decide, delay_jump, exposure_gap, exposure_outpacing, exposure_outpacing_payments,
    fact_of, lookups, orders_after_broken_promise, repeated_reversals, warning_id,
)
from shared.contract import NotificationFailed

UTC = timezone.utc
T0 = datetime(2026, 3, 20, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)
SPECS = [DELAY_WINDOW, EXPOSURE_WINDOW, REVERSAL_VIEW, PROMISE_VIEW, BOUNCE_WINDOW]


def paid(ref: str, days_late: int, at: datetime, event_id: str | None = None) -> Fact:
    return Fact("paid_late", event_id or f"e-{ref}-{at.timestamp():.0f}", ref, at, "TRY", 100_000, days_late=days_late)


def fact(kind, ref: str, at: datetime, amount: int = 0, currency: str | None = "TRY", detail: str = "") -> Fact:
    return Fact(kind, f"e-{ref}", ref, at, currency, amount, detail=detail)


# --- window arithmetic -----------------------------------------------------------------------

def _moments() -> list[datetime]:
    rng = random.Random(7)
    out = [T0, datetime(2026, 12, 7, 3, 37, 21, 123456, tzinfo=UTC)]
    for spec in SPECS:  # every window start, a microsecond before it, the last second of the window
        for w in spec.containing(T0):
            out += [w.start, w.start - timedelta(microseconds=1), w.end - timedelta(seconds=1), w.end]
    out += [datetime(2020, 1, 1, tzinfo=UTC) + timedelta(seconds=rng.uniform(0, 8 * 365 * 86400)) for _ in range(300)]
    return out


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.size.days}d-step-{s.step.days}d")
@pytest.mark.parametrize("impl", [HoppingWindow, _PyHoppingWindow], ids=["cython", "python"])
def test_windows_agree_with_fausts_window_classes(spec: WindowSpec, impl):
    faust_window = impl(spec.size.total_seconds(), spec.step.total_seconds())
    for moment in _moments():
        ts = moment.timestamp()
        mine = spec.containing(moment)
        theirs = faust_window.ranges(ts)
        assert [w.start.timestamp() for w in mine] == [r[0] for r in theirs], moment
        assert all(r[1] == pytest.approx(w.end.timestamp() - 0.1) for w, r in zip(mine, theirs))
        assert all(moment in w for w in mine)
        assert spec.current(moment).start.timestamp() == faust_window.current(ts)[0]
        assert spec.earliest(moment).start.timestamp() == faust_window.earliest(ts)[0]


def test_tumbling_windows_are_fausts_tumbling_windows_and_a_start_opens_the_next_window():
    faust_window = TumblingWindow(BOUNCE_WINDOW.size.total_seconds())
    w = BOUNCE_WINDOW.current(T0)
    assert BOUNCE_WINDOW.containing(T0) == [w] and w.end - w.start == timedelta(days=14)
    assert faust_window.ranges(T0.timestamp())[0][0] == w.start.timestamp()
    assert BOUNCE_WINDOW.current(w.end).start == w.end  # [start, end)
    assert BOUNCE_WINDOW.current(w.end - timedelta(microseconds=1)) == w
    # whole-day windows start at midnight UTC; the 30-day/7-day grid is shifted by -30 mod 7 days
    assert (w.start.hour, w.start.minute) == (0, 0)
    assert len(EXPOSURE_WINDOW.containing(T0)) in (4, 5) and len(REVERSAL_VIEW.containing(T0)) in (4, 5)
    assert EXPOSURE_WINDOW.earliest(T0).start > T0 - timedelta(days=30)
    assert EXPOSURE_WINDOW.earliest(T0).start <= T0 - timedelta(days=23)


# --- delay_jump ------------------------------------------------------------------------------

def test_delay_jump_needs_a_norm_of_three_prior_invoices():
    two = [paid("i1", 0, T0 - 60 * DAY), paid("i2", 0, T0 - 30 * DAY)]
    assert delay_jump(paid("i9", 100, T0), two) is None
    three = [*two, paid("i3", 0, T0 - 10 * DAY)]
    finding = delay_jump(paid("i9", 100, T0), three)
    assert finding is not None and finding.evidence["prior_invoices"] == 3
    assert finding.window == DELAY_WINDOW.current(T0)
    assert finding.evidence["prior_invoice_ids"] == ["i1", "i2", "i3"]


def test_delay_jump_threshold_is_fifteen_days_over_a_steady_norm_and_equal_does_not_fire():
    prior = [paid(f"i{n}", 5, T0 - (n + 1) * 20 * DAY) for n in range(3)]  # mean 5, spread 0: threshold 20
    assert delay_jump(paid("i9", 20, T0), prior) is None
    finding = delay_jump(paid("i9", 21, T0), prior)
    assert finding is not None
    assert finding.evidence == {
        "invoice_id": "i9", "event_id": finding.evidence["event_id"], "days_late": 21, "norm_days_late": 5.0,
        "norm_spread_days": 0.0, "threshold_days": 20.0, "prior_invoices": 3, "prior_invoice_ids": ["i2", "i1", "i0"],
        "prior_event_ids": [p.event_id for p in reversed(prior)]}
    assert finding.explanation == (
        "Invoice i9 was paid 21 days late on 2026-03-20, against a norm of 5.0 days (spread 0.0) over the 3 invoices"
        " paid in the previous 365 days (threshold 20.0 days).")


def test_delay_jump_threshold_is_twice_the_spread_when_that_is_more():
    prior = [paid(r, d, T0 - n * DAY) for n, (r, d) in enumerate([("a", 2), ("b", 2), ("c", 18), ("d", 18)], 1)]
    # mean 10, population deviation 8: threshold 10 + max(15, 16) = 26
    assert delay_jump(paid("x", 26, T0), prior) is None
    finding = delay_jump(paid("x", 27, T0), prior)
    assert finding is not None and finding.evidence["threshold_days"] == 26.0
    assert finding.evidence["norm_spread_days"] == 8.0


def test_delay_jump_norm_is_the_365_days_before_other_invoices_once_each():
    prior = [paid("a", 0, T0 - 365 * DAY), paid("b", 0, T0 - 100 * DAY), paid("c", 0, T0 - DAY)]
    assert delay_jump(paid("x", 16, T0), prior) is not None  # exactly 365 days before still counts
    older = [paid("a", 0, T0 - 365 * DAY - timedelta(seconds=1)), *prior[1:]]
    assert delay_jump(paid("x", 16, T0), older) is None  # only two in the year
    same_moment = [*prior[1:], paid("d", 0, T0)]
    assert delay_jump(paid("x", 16, T0), same_moment) is None  # not before it
    own = [*prior[1:], paid("x", 0, T0 - 50 * DAY)]
    assert delay_jump(paid("x", 16, T0), own) is None  # its own earlier settlement is no norm
    repaid = [*prior[1:], paid("b", 0, T0 - 20 * DAY)]  # b paid, reversed, paid again: one invoice
    assert delay_jump(paid("x", 16, T0), repaid) is None


# --- exposure_outpacing_payments -------------------------------------------------------------

def test_exposure_thresholds_are_more_than_twice_and_at_least_a_thousand_more():
    assert exposure_gap("TRY") == 100_000 and exposure_gap("JPY") == 1_000 and exposure_gap("KWD") == 1_000_000
    assert not exposure_outpacing(400_000, 200_000, "TRY")      # exactly twice
    assert exposure_outpacing(400_001, 200_000, "TRY")
    assert exposure_outpacing(100_000, 0, "TRY")                # exactly 1,000.00 more
    assert not exposure_outpacing(99_999, 0, "TRY")
    assert exposure_outpacing(1_000, 0, "JPY") and not exposure_outpacing(999, 0, "JPY")
    assert not exposure_outpacing(999_999, 0, "KWD")


def test_exposure_counts_one_currency_in_the_window_the_invoice_decides():
    window = EXPOSURE_WINDOW.earliest(T0)
    known = [
        fact("invoiced", "i1", window.start, 150_000),
        fact("payment", "p1", T0 - DAY, 100_000),
        fact("payment", "p-eur", T0 - DAY, 900_000, currency="EUR"),      # another currency: no offset
        fact("invoiced", "i0", window.start - timedelta(seconds=1), 900_000),  # before the window
    ]
    finding = exposure_outpacing_payments(fact("invoiced", "i2", T0, 100_000), known)
    assert finding is not None and finding.window == window and finding.scope == "TRY"
    assert {k: finding.evidence[k] for k in ("invoiced_minor", "paid_minor", "invoices", "payments")} == {
        "invoiced_minor": 250_000, "paid_minor": 100_000, "invoices": 2, "payments": 1}
    assert finding.explanation == (
        f"TRY2,500.00 was invoiced in 2 invoices between {window.start.date()} and"
        f" {(window.end - DAY).date()} against TRY1,000.00 paid, more than 2 times the payments and at least"
        " TRY1,000.00 more.")
    assert exposure_outpacing_payments(fact("invoiced", "i2", T0, 49_999), known) is None  # 199,999 vs 100,000


# --- repeated_reversals ----------------------------------------------------------------------

def test_two_reversals_within_exactly_thirty_days_warn_and_a_second_later_do_not():
    first = fact("reversal", "P-17", datetime(2026, 3, 2, 9, tzinfo=UTC), 10_000)
    assert repeated_reversals(fact("reversal", "P-19", first.at + 30 * DAY), [first]) is not None
    assert repeated_reversals(fact("reversal", "P-19", first.at + 30 * DAY + timedelta(seconds=1)), [first]) is None
    finding = repeated_reversals(fact("reversal", "P-19", datetime(2026, 3, 20, 15, tzinfo=UTC), 20_000), [first])
    assert finding.explanation == "2 payments reversed within 30 days: P-17 on 2026-03-02 and P-19 on 2026-03-20"
    assert finding.window == Window(first.at, first.at + 30 * DAY)
    assert finding.evidence["payment_ids"] == ["P-17", "P-19"]
    assert finding.evidence["amounts"] == ["TRY100.00", "TRY200.00"]
    assert repeated_reversals(fact("reversal", "P-17", first.at + DAY), [first]) is None  # the same payment again


def test_a_third_reversal_in_the_same_stretch_is_the_same_window():
    r1, r2 = fact("reversal", "P-1", T0), fact("reversal", "P-2", T0 + 10 * DAY)
    w12 = repeated_reversals(r2, [r1]).window
    w123 = repeated_reversals(fact("reversal", "P-3", T0 + 25 * DAY), [r1, r2])
    assert w123.window == w12 and w123.evidence["reversals"] == 3
    assert w123.explanation.startswith("3 payments reversed within 30 days: P-1 on 2026-03-20, P-2 on 2026-03-30 and")
    later = repeated_reversals(fact("reversal", "P-4", T0 + 35 * DAY), [r1, r2])  # r1 is out of reach now
    assert later.window.start == r2.at


# --- orders_after_broken_promise -------------------------------------------------------------

def test_an_invoice_up_to_thirty_days_after_a_broken_promise_warns():
    promise = fact("broken_promise", "PTP-3", T0, 50_000, currency=None)
    assert orders_after_broken_promise(fact("invoiced", "INV-9", T0 + 30 * DAY), [promise])
    assert not orders_after_broken_promise(fact("invoiced", "INV-9", T0 + 30 * DAY + timedelta(seconds=1)), [promise])
    assert not orders_after_broken_promise(fact("invoiced", "INV-9", T0), [promise])  # not after it
    [finding] = orders_after_broken_promise(fact("invoiced", "INV-9", T0 + 12 * DAY), [promise])
    assert finding.explanation == "Invoice INV-9 was issued 12 days after promise to pay PTP-3 was broken on 2026-03-20."
    assert finding.scope == "PTP-3" and finding.window == Window(T0, T0 + 30 * DAY)
    assert finding.evidence["invoice_ids"] == ["INV-9"] and finding.evidence["days_after"] == 12.0


def test_orders_after_broken_promise_does_not_depend_on_which_arrives_first():
    """The invoice (invoicing topic) and the broken promise (dunning topic) have no order between them."""
    promise = fact("broken_promise", "PTP-3", T0, currency=None)
    invoice = fact("invoiced", "INV-9", T0 + 3 * DAY, 100)
    [from_invoice] = orders_after_broken_promise(invoice, [promise])
    [from_promise] = orders_after_broken_promise(promise, [invoice])
    assert from_invoice == from_promise
    assert warning_id("t", "c", from_invoice) == warning_id("t", "c", from_promise)
    two = orders_after_broken_promise(promise, [invoice, fact("invoiced", "INV-10", T0 + 5 * DAY)])
    assert two[0].explanation == ("2 invoices (INV-9, INV-10) were issued within 30 days after promise to pay PTP-3 was"
                                  " broken on 2026-03-20.")
    assert not orders_after_broken_promise(promise, [fact("invoiced", "INV-1", T0 - DAY)])  # before the promise


def test_an_invoice_after_two_broken_promises_warns_once_for_each():
    p1, p2 = fact("broken_promise", "PTP-1", T0, currency=None), fact("broken_promise", "PTP-2", T0 + DAY, currency=None)
    found = orders_after_broken_promise(fact("invoiced", "INV-9", T0 + 2 * DAY), [p1, p2])
    assert [f.scope for f in found] == ["PTP-1", "PTP-2"]


# --- contacts_bouncing -----------------------------------------------------------------------

def test_two_bounces_in_one_fourteen_day_window_warn():
    w = BOUNCE_WINDOW.current(T0)
    b1 = fact("bounce", "n-1", w.start + DAY, currency=None, detail="bounced")
    assert contacts_bouncing(b1, []) is None
    finding = contacts_bouncing(fact("bounce", "n-2", w.end - timedelta(seconds=1), currency=None, detail="complaint"),
                                [b1])
    assert finding is not None and finding.window == w
    assert finding.evidence["codes"] == ["bounced", "complaint"] and finding.evidence["failures"] == 2
    assert finding.explanation == (
        f"2 notices bounced or drew a complaint in the 14 days from {w.start.date()}: n-1 (bounced on"
        f" {(w.start + DAY).date()}) and n-2 (complaint on {(w.end - timedelta(seconds=1)).date()}).")
    # a second apart across the boundary: two windows, one bounce each
    late = fact("bounce", "n-0", w.start - timedelta(seconds=1), currency=None, detail="bounced")
    assert contacts_bouncing(fact("bounce", "n-3", w.start, currency=None, detail="bounced"), [late]) is None


def test_only_bounces_and_complaints_are_bounces():
    def failed(code: str):
        return NotificationFailed(customer_id="c", notification_key="n", channel="email", reason="x", failed_at=T0,
                                  code=code)

    assert fact_of("NotificationFailed", "e", T0, failed("bounced")).kind == "bounce"
    assert fact_of("NotificationFailed", "e", T0, failed("complaint")).detail == "complaint"
    for code in ("suppressed", "opted_out", "no_address", "gave_up"):
        assert fact_of("NotificationFailed", "e", T0, failed(code)) is None
    assert fact_of("InvoiceOverdue", "e", T0, SimpleNamespace()) is None


# --- dispatch and identity -------------------------------------------------------------------

def test_an_invoice_is_looked_at_for_exposure_and_broken_promises_and_lookups_cover_what_decisions_read():
    promise = fact("broken_promise", "PTP-1", T0 - DAY, currency=None)
    invoice = fact("invoiced", "INV-1", T0, 200_000)
    found = decide(invoice, [promise])
    assert sorted(f.signal for f in found) == ["exposure_outpacing_payments", "orders_after_broken_promise"]
    kinds = {lk.kind: lk for lk in lookups(invoice)}
    assert kinds["broken_promise"].lo == T0 - 30 * DAY and kinds["payment"].lo == EXPOSURE_WINDOW.earliest(T0).start
    assert decide(fact("payment", "P-1", T0, 1), []) == []


def test_warning_ids_are_stable_per_customer_signal_scope_and_window():
    a = exposure_outpacing_payments(fact("invoiced", "i1", T0, 200_000), [])
    b = exposure_outpacing_payments(fact("invoiced", "i2", T0 + DAY, 300_000), [])
    assert a.window == b.window
    assert warning_id("t1", "c1", a) == warning_id("t1", "c1", b) != warning_id("t1", "c2", a)
    assert json.loads(json.dumps(a.evidence)) == a.evidence  # evidence is JSON as it stands


# --- the agent beside the behaviour agent ----------------------------------------------------

def test_the_behaviour_agent_handles_every_event_the_warnings_look_at():
    """So a record neither can read is dead-lettered by the behaviour agent, and only once."""
    from services.risk.domain.book import EVENT_TYPES

    assert set(OBSERVED_EVENTS) <= set(EVENT_TYPES)


async def test_the_warnings_agent_dead_letters_only_its_own_failures():
    from services.risk.entrypoints.warnings import own_failures

    sent = []

    async def letters(record, reason):
        sent.append(reason)

    send = own_failures(letters)
    await send(object(), "unreadable envelope: (record): Invalid JSON")
    await send(object(), "invalid InvoicePaid v1 payload: days_late: Field required")
    await send(object(), "handler failed after 3 attempts: UniqueViolationError()")
    assert sent == ["handler failed after 3 attempts: UniqueViolationError()"]
