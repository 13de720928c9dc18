"""The portal's pure rules: its signed links and what a customer may arrange alone."""
from __future__ import annotations

from datetime import date, datetime, timezone

import pytest

from services.dunning.domain.portal import (
    PortalLinkError, SelfServiceError, check_plan, check_promise, link_expiry, sign_link, verify_link,
)

KEY = b"k" * 32
NOW = datetime(2026, 3, 7, 15, 30, tzinfo=timezone.utc)


def test_a_link_names_its_tenant_and_customer_and_works_until_it_ends():
    ends = link_expiry(NOW, 30)
    assert ends == datetime(2026, 4, 7, tzinfo=timezone.utc)  # whole days: a day's notices share one link
    token = sign_link(KEY, "t1", "Ayşe/7", ends)
    subject = verify_link(KEY, token, NOW)
    assert (subject.tenant_id, subject.customer_id, subject.expires_at) == ("t1", "Ayşe/7", ends)
    assert sign_link(KEY, "t1", "Ayşe/7", link_expiry(NOW.replace(hour=23), 30)) == token
    with pytest.raises(PortalLinkError) as e:
        verify_link(KEY, token, ends)
    assert e.value.reason == "expired"


@pytest.mark.parametrize("tamper", [
    lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # the signature
    lambda t: ("X" if t[0] != "X" else "Y") + t[1:],  # the payload
    lambda t: t.replace(".", ""),
    lambda t: "x" * 3000,
])
def test_a_changed_or_made_up_link_opens_nothing(tamper):
    token = sign_link(KEY, "t1", "C1", link_expiry(NOW, 30))
    with pytest.raises(PortalLinkError) as e:
        verify_link(KEY, tamper(token), NOW)
    assert e.value.reason == "invalid"
    with pytest.raises(PortalLinkError):
        verify_link(b"other" * 8, token, NOW)  # another installation's key


def test_a_promise_is_for_today_up_to_the_policys_days():
    check_promise(date(2026, 3, 7), date(2026, 3, 7), 14)
    check_promise(date(2026, 3, 21), date(2026, 3, 7), 14)
    for promised, reason in ((date(2026, 3, 22), "at most 14 days"), (date(2026, 3, 6), "past")):
        with pytest.raises(SelfServiceError) as e:
            check_promise(promised, date(2026, 3, 7), 14)
        assert e.value.field == "promised_date" and reason in e.value.reason


@pytest.mark.parametrize("count,first,every,field,reason", [
    (1, date(2026, 3, 10), 30, "count", "at least 2"),
    (7, date(2026, 3, 10), 30, "count", "at most 6"),
    (2, date(2026, 3, 6), 30, "first_due", "past"),
    (2, date(2026, 4, 7), 30, "first_due", "at most 30 days"),
    (6, date(2026, 4, 1), 32, "count", "more than 180 days"),
])
def test_a_plan_stays_within_the_policys_limits(count, first, every, field, reason):
    with pytest.raises(SelfServiceError) as e:
        check_plan(count, first, every, date(2026, 3, 7), max_instalments=6, max_days=180, max_first_due_days=30)
    assert e.value.field == field and reason in e.value.reason


def test_a_plan_at_the_limits_is_allowed():
    check_plan(6, date(2026, 4, 6), 30, date(2026, 3, 7), max_instalments=6, max_days=180, max_first_due_days=30)
