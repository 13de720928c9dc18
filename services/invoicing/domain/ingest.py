"""What an incoming invoice record means against what is already recorded: pure decisions.

(billing source, external id) is the idempotency key: the same record again is `unchanged`,
a changed one is `adjusted` (with what changed), a cancellation is `cancelled`; what cannot
be applied is `rejected` with the field and the reason."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date
from typing import Any


@dataclass(frozen=True)
class RecordedInvoice:
    customer_id: str
    number: str
    currency: str
    amount_minor: int
    open_minor: int
    issue_date: date
    due_date: date
    status: str  # open | paid | cancelled


@dataclass(frozen=True)
class IncomingInvoice:
    customer_id: str
    number: str
    currency: str
    amount_minor: int
    issue_date: date
    due_date: date
    cancelled: bool = False


@dataclass(frozen=True)
class Decision:
    outcome: str  # created | unchanged | adjusted | cancelled | rejected
    changes: dict[str, dict[str, Any]] = field(default_factory=dict)  # field -> {"old", "new"}
    new_open_minor: int | None = None
    field: str | None = None
    reason: str | None = None

    @staticmethod
    def reject(field_name: str, reason: str) -> "Decision":
        return Decision("rejected", field=field_name, reason=reason)


_ADJUSTABLE = ("number", "amount_minor", "issue_date", "due_date")


def decide(incoming: IncomingInvoice, recorded: RecordedInvoice | None) -> Decision:
    if recorded is None:
        if incoming.cancelled:
            return Decision.reject("status", "cannot cancel an invoice that was never issued")
        return Decision("created", new_open_minor=incoming.amount_minor)
    if recorded.status == "cancelled":
        if incoming.cancelled:
            return Decision("unchanged")
        return Decision.reject("status", "this invoice was cancelled; issue a new one under a new external_id")
    if incoming.customer_id != recorded.customer_id:
        return Decision.reject("customer.id", f"the invoice belongs to customer {recorded.customer_id!r}; it cannot move")
    if incoming.currency != recorded.currency:
        return Decision.reject("currency", f"the invoice is in {recorded.currency}; cancel it and issue a new one")
    paid = recorded.amount_minor - recorded.open_minor
    if incoming.cancelled:
        if paid:
            return Decision.reject("status", f"{paid} minor units are already paid; issue a credit note instead")
        return Decision("cancelled", new_open_minor=0)
    changes = {
        name: {"old": _plain(getattr(recorded, name)), "new": _plain(getattr(incoming, name))}
        for name in _ADJUSTABLE
        if getattr(recorded, name) != getattr(incoming, name)
    }
    if not changes:
        return Decision("unchanged")
    if incoming.amount_minor < paid:
        return Decision.reject("amount_minor", f"below the {paid} minor units already paid; issue a credit note instead")
    return Decision("adjusted", changes=changes, new_open_minor=incoming.amount_minor - paid)


def _plain(value: Any) -> Any:
    return value.isoformat() if isinstance(value, date) else value


def waves(keys: list[str]) -> list[list[int]]:
    """Split item positions so that no key appears twice in one wave; later duplicates of a key
    go to later waves, so records for the same invoice apply in the order they were sent."""
    seen: dict[str, int] = {}
    out: list[list[int]] = []
    for i, key in enumerate(keys):
        wave = seen.get(key, -1) + 1
        seen[key] = wave
        if wave == len(out):
            out.append([])
        out[wave].append(i)
    return out
