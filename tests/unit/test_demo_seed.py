"""The demo's seed: the same for the same seed, customers spread over the payment profiles by
their weights, and profiles that really pay differently (else risk grades would mean nothing)."""
from __future__ import annotations

import random
from collections import Counter, defaultdict
from datetime import date, timedelta
from statistics import median
from types import SimpleNamespace

import pytest

from tahsilat.demo import AHEAD_DAYS, HISTORY_DAYS, PROFILE_WEIGHTS, assign_profiles, make_seed, risk_counts

TODAY = date(2026, 6, 30)


@pytest.fixture(scope="module")
def seed():
    return make_seed(TODAY)


def invoice_outcomes(seed):
    """Per customer, its invoices in due date order as (due date, days late or None: unpaid,
    paid in full)."""
    payments = {p["invoice_refs"][0]: p for p in seed.payments}
    outcomes = defaultdict(list)
    for i in seed.invoices:
        due = date.fromisoformat(i["due_date"])
        p = payments.get(i["external_id"])
        in_full = p is not None and p["amount_minor"] == i["amount_minor"]
        outcomes[i["customer"]["id"]].append((due, None if p is None else (p["_on"] - due).days, in_full))
    return {c: sorted(rows, key=lambda r: r[0]) for c, rows in outcomes.items()}


def test_same_seed_same_data_other_seed_other_data(seed):
    assert make_seed(TODAY) == seed
    other = make_seed(TODAY, seed=8)
    assert other.profiles != seed.profiles and other.invoices != seed.invoices


def test_default_counts_and_a_longer_history(seed):
    assert (len(seed.customers), len(seed.invoices)) == (300, 3000)
    dues = [date.fromisoformat(i["due_date"]) for i in seed.invoices]
    assert min(dues) >= TODAY - timedelta(days=HISTORY_DAYS) and max(dues) <= TODAY + timedelta(days=AHEAD_DAYS)
    assert min(dues) <= TODAY - timedelta(days=140)  # the history really is five months long
    assert all(p["_on"] <= TODAY for p in seed.payments)  # a payment after today is never sent


def test_every_profile_occurs_with_its_weight(seed):
    counts = Counter(seed.profiles.values())
    assert set(counts) == set(PROFILE_WEIGHTS)
    for profile, weight in PROFILE_WEIGHTS.items():
        assert abs(counts[profile] / 300 - weight) <= 0.05, (profile, counts[profile])


@pytest.mark.parametrize("customers", [3, 7, 33, 301])
def test_profile_counts_follow_the_weights_for_any_number_and_seed(customers):
    for seed_value in range(5):
        counts = Counter(assign_profiles(random.Random(seed_value), customers))
        assert sum(counts.values()) == customers
        for profile, weight in PROFILE_WEIGHTS.items():
            assert abs(counts[profile] - weight * customers) < 1


def test_the_profile_is_nowhere_in_what_is_posted(seed):
    names = set(PROFILE_WEIGHTS)
    for body in [*seed.customers, *seed.invoices, *seed.payments]:
        assert not names & {str(v) for v in body.values()}
        assert not names & {str(v) for v in body.get("customer", {}).values()}


def test_median_days_late_orders_reliable_steady_slow(seed):
    outcomes = invoice_outcomes(seed)
    days_late = defaultdict(list)
    for customer, rows in outcomes.items():
        days_late[seed.profiles[customer]] += [late for _, late, in_full in rows if late is not None and in_full]
    medians = {p: median(days_late[p]) for p in ("reliable", "steady", "slow")}
    assert medians["reliable"] < medians["steady"] < medians["slow"], medians
    assert medians["slow"] >= 15


def test_deteriorating_customers_pay_each_invoice_later_than_the_last(seed):
    outcomes = invoice_outcomes(seed)
    deteriorating = [c for c, p in seed.profiles.items() if p == "deteriorating"]
    assert len(deteriorating) == 30
    for customer in deteriorating:
        paid = [late for _, late, _ in outcomes[customer] if late is not None]
        assert paid, customer  # the first invoice falls due months ago
        assert paid == sorted(set(paid)), (customer, paid)  # strictly later, invoice after invoice
        assert paid[0] == 0  # the first on time
        # the late ones are still open: any unpaid invoice comes after every paid one
        unpaid_from = next((k for k, (_, late, _) in enumerate(outcomes[customer]) if late is None), None)
        assert unpaid_from is None or all(late is None for _, late, _ in outcomes[customer][unpaid_from:])


def test_delinquent_customers_leave_the_most_invoices_unpaid(seed):
    outcomes = invoice_outcomes(seed)
    unpaid, total = Counter(), Counter()
    for customer, rows in outcomes.items():
        profile = seed.profiles[customer]
        total[profile] += len(rows)
        unpaid[profile] += sum(1 for _, late, in_full in rows if late is None or not in_full)
    share = {p: unpaid[p] / total[p] for p in PROFILE_WEIGHTS}
    assert max(share, key=share.get) == "delinquent", share
    assert share["delinquent"] >= 0.5


def test_risk_counts_take_each_customers_latest_assessment_and_skip_other_events():
    def event(type_, **data):
        return SimpleNamespace(type=type_, data=data)

    counts = risk_counts([
        event("RiskAssessed", customer_id="C1", segment="standard", grade="A"),
        event("RiskAssessed", customer_id="C1", segment="high_risk", grade="D"),
        event("RiskAssessed", customer_id="C2", segment="standard", grade=None),  # graded before grades existed
        event("EarlyWarningRaised", customer_id="C2", signal="delay_jump"),
        event("RiskAssessed", customer_id="C3", segment="standard", grade="A"),
    ])
    assert counts == {"segments": Counter({"standard": 2, "high_risk": 1}),
                      "grades": Counter({"D": 1, "standard": 1, "A": 1})}
