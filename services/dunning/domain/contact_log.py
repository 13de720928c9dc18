"""The contact log without I/O: which events are interactions with a customer, and what each
one says in the timeline (kind, channel, who, amount, what it is about). Entries take the
event's id, so a redelivered event adds nothing; nothing is edited, a correction is new."""
from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shared.contract import Envelope
from shared.contract.events import EventPayload


@dataclass(frozen=True)
class Entry:
    entry_id: uuid.UUID
    tenant_id: str
    customer_id: str
    at: datetime
    kind: str
    actor: str
    channel: str | None = None
    amount_minor: int | None = None
    currency: str | None = None
    ref: str | None = None
    note: str | None = None
    corrects: uuid.UUID | None = None
    detail: dict[str, Any] = field(default_factory=dict)


def _notice_total(p) -> tuple[int | None, str | None]:
    if not p.items:
        return None, None
    return (sum(i.open_amount_minor + i.fees_minor + i.interest_minor for i in p.items), p.items[0].currency)


def _fields(p, env: Envelope) -> dict[str, Any] | None:  # noqa: C901 - one flat table of cases
    """The entry's fields for one event, or None for events that are not an interaction."""
    match env.type:
        case "NotificationRequested":
            total, currency = _notice_total(p)
            return dict(kind="notice", at=p.requested_at, actor="dunning", channel=p.channel, amount_minor=total,
                        currency=currency, ref=p.notification_key,
                        detail={"step": p.step, "template": p.template, "case_id": p.case_id,
                                "invoices": [i.number for i in p.items]})
        case "NotificationSent":
            return dict(kind="notice_sent", at=p.sent_at, actor="notifier", channel=p.channel, ref=p.notification_key,
                        detail={"template": p.template, "language": p.language})
        case "NotificationDelivered":
            return dict(kind="notice_delivered", at=p.delivered_at, actor="notifier", channel=p.channel,
                        ref=p.notification_key)
        case "NotificationFailed":
            return dict(kind="notice_failed", at=p.failed_at, actor="notifier", channel=p.channel,
                        ref=p.notification_key, note=p.reason, detail={"code": p.code, "bounce_class": p.bounce_class})
        case "ContactOptedOut":
            return dict(kind="opted_out", at=p.opted_out_at, actor=p.source, channel=p.channel)
        case "ContactOptedIn":
            return dict(kind="opted_in", at=p.opted_in_at, actor=p.source, channel=p.channel, note=p.consent)
        case "PaymentReceived":
            return dict(kind="payment", at=p.received_at, actor=p.billing_source, amount_minor=p.amount_minor,
                        currency=p.currency, ref=p.external_id,
                        detail={"invoices": len(p.allocations), "unapplied_minor": p.unapplied_minor})
        case "CreditNoteIssued":
            return dict(kind="credit_note", at=env.time, actor=p.billing_source, amount_minor=p.amount_minor,
                        currency=p.currency, ref=p.external_id, note=p.reason)
        case "PaymentReversed":
            return dict(kind="payment_reversed", at=p.reversed_at, actor=p.billing_source,
                        amount_minor=p.amount_minor, currency=p.currency, ref=p.external_id, note=p.reason)
        case "BalanceConfirmationRequested":
            return dict(kind="statement", at=p.requested_at, actor="invoicing", ref=p.confirmation_id,
                        detail={"as_of": p.as_of.isoformat(),
                                "balances": {b.currency: b.balance_minor for b in p.balances}})
        case "BalanceConfirmed":
            return dict(kind="balance_confirmed", at=p.confirmed_at, actor="customer", ref=p.confirmation_id)
        case "BalanceContested":
            return dict(kind="balance_contested", at=p.contested_at, actor="customer", ref=p.confirmation_id,
                        note=p.reason)
        case "PromiseToPayRecorded":
            return dict(kind="promise", at=p.recorded_at, actor=p.taken_by, channel=p.channel,
                        amount_minor=p.amount_minor, currency=p.currency, ref=p.promise_id,
                        detail={"promised_date": p.promised_date.isoformat(), "case_id": p.case_id})
        case "PromiseToPayKept":
            return dict(kind="promise_kept", at=p.kept_at, actor="dunning", amount_minor=p.paid_minor,
                        ref=p.promise_id)
        case "PromiseToPayBroken":
            return dict(kind="promise_broken", at=p.broken_at, actor="dunning", amount_minor=p.amount_minor,
                        ref=p.promise_id, detail={"paid_minor": p.paid_minor})
        case "PaymentPlanAgreed":
            return dict(kind="plan_agreed", at=p.agreed_at, actor=p.agreed_by, amount_minor=p.total_minor,
                        currency=p.currency, ref=p.plan_id, detail={"instalments": len(p.instalments)})
        case "PaymentPlanBroken":
            return dict(kind="plan_broken", at=p.broken_at, actor="dunning", ref=p.plan_id,
                        detail={"missed_sequence": p.missed_sequence, "paid_minor": p.paid_minor})
        case "PaymentPlanCompleted":
            return dict(kind="plan_completed", at=p.completed_at, actor="dunning", amount_minor=p.paid_minor,
                        ref=p.plan_id)
        case "DisputeOpened":
            return dict(kind="dispute_opened", at=p.opened_at, actor=p.origin, ref=p.dispute_id, note=p.reason,
                        detail={"reason_code": p.reason_code, "invoice_ids": p.invoice_ids})
        case "DisputeResolved":
            return dict(kind="dispute_resolved", at=p.resolved_at, actor=p.resolved_by, ref=p.dispute_id,
                        note=p.resolution, amount_minor=p.credit_minor, detail={"outcome": p.outcome})
        case "SettlementOffered":
            return dict(kind="settlement_offered", at=p.offered_at, actor=p.offered_by, amount_minor=p.pay_minor,
                        currency=p.currency, ref=p.offer_id,
                        detail={"pay_by": p.pay_by.isoformat(), "discount_minor": p.discount_minor})
        case "SettlementAccepted":
            return dict(kind="settlement_accepted", at=p.accepted_at, actor="customer", amount_minor=p.paid_minor,
                        currency=p.currency, ref=p.offer_id)
        case "CaseEscalatedToLegal":
            return dict(kind="legal", at=p.escalated_at, actor="dunning", amount_minor=p.total_minor,
                        currency=p.currency, ref=p.case_id)
        case "ContactLogged":
            return dict(kind=p.kind, at=p.logged_at, actor=p.logged_by, ref=p.task_id, note=p.note,
                        corrects=uuid.UUID(p.corrects) if p.corrects else None,
                        detail={"outcome": p.outcome} if p.outcome else {})
    return None


LOGGED_TYPES = ("NotificationRequested", "NotificationSent", "NotificationDelivered", "NotificationFailed",
                "ContactOptedOut", "ContactOptedIn", "PaymentReceived", "CreditNoteIssued", "PaymentReversed",
                "BalanceConfirmationRequested", "BalanceConfirmed", "BalanceContested", "PromiseToPayRecorded",
                "PromiseToPayKept", "PromiseToPayBroken", "PaymentPlanAgreed", "PaymentPlanBroken",
                "PaymentPlanCompleted", "DisputeOpened", "DisputeResolved", "SettlementOffered", "SettlementAccepted",
                "CaseEscalatedToLegal", "ContactLogged")


def entry_of(envelope: Envelope, payload: EventPayload) -> Entry | None:
    """The timeline entry an event makes (its id: the event's, or a logged entry's own), or None."""
    fields = _fields(payload, envelope)
    if fields is None:
        return None
    entry_id = uuid.UUID(payload.entry_id) if envelope.type == "ContactLogged" else envelope.id
    return Entry(entry_id=entry_id, tenant_id=envelope.tenant_id, customer_id=payload.customer_id, **fields)
