"""The event contract shared by every Tahsilat service: envelope, payload models, topics."""
from shared.contract.envelope import Envelope, new_envelope, partition_key
from shared.contract.events import (
    BalanceConfirmationRequested,
    BalanceConfirmed,
    BalanceContested,
    CaseEscalatedToLegal,
    CreditApplied,
    CreditNoteIssued,
    CreditNoteRequested,
    DisputeAgeing,
    CustomerUpserted,
    DisputeOpened,
    DisputeResolved,
    DunningStepExecuted,
    EventPayload,
    InvoiceAdjusted,
    InvoiceCancelled,
    InvoiceIssued,
    InterestAccrued,
    InvoiceOverdue,
    InvoicePaid,
    LateFeeAssessed,
    NotificationFailed,
    NotificationRequested,
    NotificationSent,
    PaymentPlanAgreed,
    PaymentPlanBroken,
    PaymentPlanCompleted,
    PaymentReceived,
    PaymentReversed,
    PromiseToPayBroken,
    PromiseToPayKept,
    PromiseToPayRecorded,
    RiskAssessed,
)
from shared.contract.registry import REGISTRY, UnknownEventType, parse_payload
from shared.contract.topics import Topics

__all__ = [
    "Envelope", "new_envelope", "partition_key", "EventPayload", "CustomerUpserted",
    "InvoiceIssued", "InvoiceAdjusted", "InvoiceCancelled", "PaymentReceived", "PaymentReversed", "CreditApplied", "CreditNoteIssued",
    "LateFeeAssessed", "InterestAccrued", "BalanceConfirmationRequested", "BalanceConfirmed", "BalanceContested", "DisputeOpened", "DisputeResolved", "InvoicePaid", "InvoiceOverdue",
    "NotificationRequested", "NotificationSent", "NotificationFailed", "RiskAssessed",
    "DunningStepExecuted", "CaseEscalatedToLegal", "CreditNoteRequested", "DisputeAgeing", "PaymentPlanAgreed", "PaymentPlanBroken",
    "PaymentPlanCompleted", "PromiseToPayBroken", "PromiseToPayKept", "PromiseToPayRecorded", "REGISTRY", "UnknownEventType", "parse_payload", "Topics",
]
