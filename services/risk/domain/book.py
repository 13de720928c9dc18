"""A customer's book as risk knows it: every invoice (amount, what is open, when it was settled
and how late) and what else the customer did (promises and plans broken, disputes, reversed
payments, contact problems). Events fold into it one at a time, in order, so the assessment after
each event is the same however a consumer batches them. Pure: no I/O."""
from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

COUNTERS = ("promises_kept", "promises_broken", "plans_broken", "disputes_opened", "disputes_rejected",
            "payments_reversed", "contacts_bounced", "contacts_opted_out")


@dataclass
class InvoiceFact:
    invoice_id: str
    currency: str
    amount_minor: int
    open_minor: int
    issue_date: date
    due_date: date
    updated_at: datetime
    status: str = "open"  # open | paid | cancelled
    paid_at: datetime | None = None
    days_late: int | None = None  # at settlement: days after the due date (negative: early)
    overdue_at: datetime | None = None
    reopened: int = 0  # times a reversal re-opened it


@dataclass
class CustomerFacts:
    updated_at: datetime | None = None
    promises_kept: int = 0
    promises_broken: int = 0
    plans_broken: int = 0
    disputes_opened: int = 0
    disputes_rejected: int = 0
    payments_reversed: int = 0
    contacts_bounced: int = 0
    contacts_opted_out: int = 0
    last_broken_at: datetime | None = None
    language: str | None = None
    terms_days: int | None = None
    parent_id: str | None = None


@dataclass
class CustomerBook:
    tenant_id: str
    customer_id: str
    facts: CustomerFacts = field(default_factory=CustomerFacts)
    invoices: dict[str, InvoiceFact] = field(default_factory=dict)
    known: bool = False  # the customer row exists in the store
    changed_invoices: set[str] = field(default_factory=set)
    facts_changed: bool = False

    def apply(self, kind: str, p: Any, at: datetime) -> bool:
        """Fold one event in; False when the event type tells risk nothing."""
        fold = _FOLDS.get(kind)
        if fold is None:
            return False
        fold(self, p, at)
        return True

    # -- invoices -------------------------------------------------------------------------------
    def _touch(self, inv: InvoiceFact, at: datetime) -> None:
        inv.updated_at = at
        self.changed_invoices.add(inv.invoice_id)

    def issued(self, p: Any, at: datetime) -> None:
        if p.invoice_id in self.invoices:
            return  # issued once; later changes come as adjustments
        self.invoices[p.invoice_id] = InvoiceFact(p.invoice_id, p.currency, p.amount_minor, p.amount_minor,
                                                  p.issue_date, p.due_date, at)
        self.changed_invoices.add(p.invoice_id)

    def adjusted(self, p: Any, at: datetime) -> None:
        inv = self.invoices.get(p.invoice_id)
        if inv is None:
            return
        inv.amount_minor, inv.open_minor = p.amount_minor, p.open_amount_minor
        inv.issue_date, inv.due_date = p.issue_date, p.due_date
        if inv.status != "cancelled" and inv.open_minor > 0:
            inv.status = "open"
        self._touch(inv, at)

    def cancelled(self, p: Any, at: datetime) -> None:
        inv = self.invoices.get(p.invoice_id)
        if inv is not None:
            inv.status, inv.open_minor = "cancelled", 0
            self._touch(inv, at)

    def allocated(self, p: Any, at: datetime) -> None:
        """PaymentReceived, CreditNoteIssued, CreditApplied: what each invoice still owes."""
        for a in p.allocations:
            inv = self.invoices.get(a.invoice_id)
            if inv is not None and inv.status != "cancelled":
                inv.open_minor = a.invoice_open_minor
                self._touch(inv, at)

    def reversed(self, p: Any, at: datetime) -> None:
        for a in p.reopened:
            inv = self.invoices.get(a.invoice_id)
            if inv is None or inv.status == "cancelled":
                continue
            inv.open_minor = a.invoice_open_minor
            if inv.open_minor > 0:
                if inv.status == "paid":
                    inv.status = "open"
                inv.paid_at, inv.days_late = None, None
            inv.reopened += 1
            self._touch(inv, at)
        self.count("payments_reversed", at)

    def paid(self, p: Any, at: datetime) -> None:
        inv = self.invoices.get(p.invoice_id)
        if inv is not None and inv.status != "cancelled":
            inv.status, inv.open_minor, inv.paid_at, inv.days_late = "paid", 0, p.paid_at, p.days_late
            self._touch(inv, at)

    def overdue(self, p: Any, at: datetime) -> None:
        inv = self.invoices.get(p.invoice_id)
        if inv is not None and inv.status == "open":
            inv.overdue_at = inv.overdue_at or p.overdue_since
            inv.open_minor = p.open_amount_minor
            self._touch(inv, at)

    # -- the customer ---------------------------------------------------------------------------
    def count(self, counter: str, at: datetime) -> None:
        setattr(self.facts, counter, getattr(self.facts, counter) + 1)
        if counter in ("promises_broken", "plans_broken"):
            self.facts.last_broken_at = at
        self.facts.updated_at = at
        self.facts_changed = True

    def described(self, p: Any, at: datetime) -> None:
        """CustomerUpserted: the language explanations are written in, and the agreed terms."""
        self.facts.language, self.facts.terms_days = p.language, p.credit_terms_days
        self.facts.updated_at = at
        self.facts_changed = True

    # -- what the book says ---------------------------------------------------------------------
    def as_of(self, at: datetime) -> datetime:
        """The moment to assess at: the latest event time the book has seen. A customer's events
        come on three topics whose interleaving differs between runs; assessing at the latest
        time known (not at the time of whichever event came last) keeps the score a function of
        the facts."""
        latest = [at, *(i.updated_at for i in self.invoices.values())]
        if self.facts.updated_at is not None:
            latest.append(self.facts.updated_at)
        return max(latest)

    def exposure(self) -> dict[str, int]:
        """Open receivables per currency (never summed across currencies)."""
        out: dict[str, int] = {}
        for inv in self.invoices.values():
            if inv.status == "open" and inv.open_minor > 0:
                out[inv.currency] = out.get(inv.currency, 0) + inv.open_minor
        return out


def _counting(counter: str, when=None):
    def fold(book: CustomerBook, p: Any, at: datetime) -> None:
        if when is None or when(p):
            book.count(counter, at)
    return fold


_FOLDS = {
    "CustomerUpserted": CustomerBook.described,
    "InvoiceIssued": CustomerBook.issued,
    "InvoiceAdjusted": CustomerBook.adjusted,
    "InvoiceCancelled": CustomerBook.cancelled,
    "PaymentReceived": CustomerBook.allocated,
    "CreditNoteIssued": CustomerBook.allocated,
    "CreditApplied": CustomerBook.allocated,
    "PaymentReversed": CustomerBook.reversed,
    "InvoicePaid": CustomerBook.paid,
    "InvoiceOverdue": CustomerBook.overdue,
    "PromiseToPayKept": _counting("promises_kept"),
    "PromiseToPayBroken": _counting("promises_broken"),
    "PaymentPlanBroken": _counting("plans_broken"),
    "DisputeOpened": _counting("disputes_opened"),
    "DisputeResolved": _counting("disputes_rejected", lambda p: p.outcome == "rejected"),
    "NotificationFailed": _counting("contacts_bounced", lambda p: p.code in ("bounced", "complaint")),
    "ContactOptedOut": _counting("contacts_opted_out"),
}
EVENT_TYPES = tuple(_FOLDS)


def invoice_ids_named(kind: str, p: Any) -> list[str]:
    """The invoices an event changes (to load them even when they are old and settled)."""
    if kind in ("PaymentReceived", "CreditNoteIssued", "CreditApplied"):
        return [a.invoice_id for a in p.allocations]
    if kind == "PaymentReversed":
        return [a.invoice_id for a in p.reopened]
    invoice_id = getattr(p, "invoice_id", None)
    return [invoice_id] if invoice_id else []
