"""Integration event payloads, one class per (type, version).

Rules: add-only within a version (new optional fields only); a breaking change is a new
version plus an upcaster in the registry. tests/contract snapshots every JSON Schema.
"""
from __future__ import annotations

from datetime import date
from typing import ClassVar, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from shared.contract.money import CurrencyCode
from shared.contract.registry import REGISTRY

Channel = Literal["email", "sms", "webhook", "collector_call", "letter", "legal"]
Language = Literal["en", "tr", "cs", "fa"]
RiskSegment = Literal["low", "medium", "high"]
DisputeReason = Literal["price", "quantity", "quality", "not_received", "duplicate", "already_paid", "other"]


class EventPayload(BaseModel):
    # Consumers ignore fields they do not know yet, so producers may add fields within a version.
    model_config = ConfigDict(extra="ignore", frozen=True)
    event_type: ClassVar[str]
    event_version: ClassVar[int]

    customer_id: str = Field(min_length=1, max_length=200)


@REGISTRY.register("CustomerUpserted", 1)
class CustomerUpserted(EventPayload):
    name: str
    language: Language = "en"
    timezone: str = "UTC"
    email: str | None = None
    phone: str | None = None
    billing_source: str | None = None
    placeholder: bool = Field(default=False, description="created from an invoice or payment for an unknown customer")
    credit_terms_days: int | None = Field(default=None, description="agreed payment terms in days")


@REGISTRY.register("InvoiceIssued", 1)
class InvoiceIssued(EventPayload):
    invoice_id: str
    billing_source: str
    external_id: str
    number: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    issue_date: date
    due_date: date


class FieldChange(BaseModel):
    model_config = ConfigDict(frozen=True)
    old: str | int | None
    new: str | int | None


@REGISTRY.register("InvoiceAdjusted", 1)
class InvoiceAdjusted(EventPayload):
    invoice_id: str
    billing_source: str
    external_id: str
    number: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    open_amount_minor: int = Field(ge=0)
    issue_date: date
    due_date: date
    changes: dict[str, FieldChange] = Field(description="field name -> old and new value")


@REGISTRY.register("InvoiceCancelled", 1)
class InvoiceCancelled(EventPayload):
    invoice_id: str
    billing_source: str
    external_id: str
    number: str
    currency: CurrencyCode
    cancelled_at: AwareDatetime


class Allocation(BaseModel):
    model_config = ConfigDict(frozen=True)
    invoice_id: str
    amount_minor: int = Field(gt=0)
    invoice_open_minor: int = Field(ge=0, description="what the invoice still owes after this allocation")


@REGISTRY.register("PaymentReceived", 1)
class PaymentReceived(EventPayload):
    payment_id: str
    billing_source: str
    external_id: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    received_at: AwareDatetime
    allocations: list[Allocation] = []
    unapplied_minor: int = Field(ge=0, default=0)


@REGISTRY.register("CreditNoteIssued", 1)
class CreditNoteIssued(EventPayload):
    """A billing source credited the customer; applied like a payment."""

    credit_note_id: str
    billing_source: str
    external_id: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    issue_date: date
    allocations: list[Allocation] = []
    unapplied_minor: int = Field(ge=0, default=0)
    reason: str | None = None


@REGISTRY.register("CreditApplied", 1)
class CreditApplied(EventPayload):
    """Unapplied credit from an earlier payment settled (part of) invoices issued later."""

    payment_id: str
    currency: CurrencyCode
    allocations: list[Allocation]
    unapplied_minor: int = Field(ge=0, description="credit still unapplied on this payment afterwards")
    applied_at: AwareDatetime


@REGISTRY.register("PaymentReversed", 1)
class PaymentReversed(EventPayload):
    """A payment bounced or was recalled: what it paid is owed again."""

    payment_id: str
    billing_source: str
    external_id: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    reopened: list[Allocation] = Field(description="invoices re-opened, with what they owe again")
    reason: str | None = None
    reversed_at: AwareDatetime


@REGISTRY.register("InvoicePaid", 1)
class InvoicePaid(EventPayload):
    invoice_id: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    due_date: date
    paid_at: AwareDatetime
    days_late: int = Field(description="days after the due date it was settled; negative if early")


@REGISTRY.register("InvoiceOverdue", 1)
class InvoiceOverdue(EventPayload):
    invoice_id: str
    number: str
    currency: CurrencyCode
    open_amount_minor: int = Field(gt=0)
    due_date: date
    overdue_since: AwareDatetime


class Balance(BaseModel):
    model_config = ConfigDict(frozen=True)
    currency: CurrencyCode
    balance_minor: int


class OfferTerms(BaseModel):
    model_config = ConfigDict(frozen=True)
    currency: CurrencyCode
    pay_minor: int = Field(gt=0)
    discount_minor: int = Field(gt=0)
    pay_by: date


class NoticeItem(BaseModel):
    model_config = ConfigDict(frozen=True)
    invoice_id: str
    number: str
    currency: CurrencyCode
    open_amount_minor: int = Field(ge=0)
    due_date: date
    days_overdue: int | None = Field(default=None, ge=0, description="on the day of the notice")
    fees_minor: int = Field(default=0, ge=0, description="dunning fees and compensation charged on it to date")
    interest_minor: int = Field(default=0, ge=0, description="late-payment interest charged on it to date")


@REGISTRY.register("NotificationRequested", 1)
class NotificationRequested(EventPayload):
    notification_key: str = Field(description="idempotency key: one notification per (case, step, channel)")
    case_id: str
    step: str
    channel: Channel
    template: str
    items: list[NoticeItem]
    requested_at: AwareDatetime
    links: dict[str, str] = Field(default_factory=dict, description="named links the message carries, e.g. confirm")
    balances: list["Balance"] = Field(default_factory=list, description="account balances the message states")
    offer: "OfferTerms | None" = Field(default=None, description="a settlement offer the message makes")


@REGISTRY.register("NotificationSent", 1)
class NotificationSent(EventPayload):
    notification_key: str
    channel: Channel
    template: str
    language: Language
    sent_at: AwareDatetime
    provider_message_id: str | None = None


FailureCode = Literal["opted_out", "declined", "suppressed", "no_address", "bounced", "complaint", "rejected",
                      "gave_up"]
BounceClass = Literal["hard", "soft", "complaint"]


@REGISTRY.register("NotificationFailed", 1)
class NotificationFailed(EventPayload):
    """A notice will not reach the customer on this channel: dunning falls back (another
    channel or a collector task)."""

    notification_key: str
    channel: Channel
    reason: str
    failed_at: AwareDatetime
    code: FailureCode | None = Field(default=None, description=(
        "opted_out: the person unsubscribed or sent STOP; declined: the contact's channel preferences exclude it;"
        " suppressed: the address bounced or complained before; no_address: none on file; bounced / complaint:"
        " the provider reported it after sending; rejected: the provider refused it; gave_up: transient failures"
        " until the last attempt"))
    bounce_class: BounceClass | None = Field(default=None, description="for a provider's report: hard, soft or complaint")


@REGISTRY.register("NotificationDelivered", 1)
class NotificationDelivered(EventPayload):
    """The provider reported the message delivered (an SMS receipt, an email delivery event)."""

    notification_key: str
    channel: Channel
    delivered_at: AwareDatetime
    provider_message_id: str | None = None


ContactChannel = Literal["email", "sms", "webhook"]


@REGISTRY.register("ContactOptedOut", 1)
class ContactOptedOut(EventPayload):
    """The person asked for no more messages on a channel (unsubscribe link, STOP, complaint, or
    a collector on their behalf). Nothing more is sent there until ContactOptedIn."""

    channel: ContactChannel
    source: Literal["unsubscribe_link", "sms_keyword", "complaint", "api"]
    opted_out_at: AwareDatetime


@REGISTRY.register("ContactOptedIn", 1)
class ContactOptedIn(EventPayload):
    channel: ContactChannel
    source: Literal["sms_keyword", "api"]
    opted_in_at: AwareDatetime
    consent: str | None = Field(default=None, description="how the person agreed again, as a collector recorded it")


@REGISTRY.register("LateFeeAssessed", 1)
class LateFeeAssessed(EventPayload):
    """Dunning charged a late-payment fee or interest; invoicing books it on the customer's account."""

    fee_id: str = Field(description="idempotency key of the fee, e.g. case:step")
    case_id: str
    invoice_id: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    reason: str
    assessed_at: AwareDatetime


class InterestPeriod(BaseModel):
    model_config = ConfigDict(frozen=True)
    start: date
    end: date = Field(description="exclusive")
    days: int = Field(ge=1)
    annual_rate: str = Field(description="percent, as in the rate table, e.g. '10.15'")
    principal_minor: int | None = Field(default=None, description="what was owed on each day of the period")


@REGISTRY.register("InterestAccrued", 1)
class InterestAccrued(EventPayload):
    """Statutory late-payment interest on an overdue invoice for the days [start, end): simple
    interest, actual days / 365, the rate split by the jurisdiction's rate periods."""

    accrual_id: str = Field(description="idempotency key: invoice and the end of the period")
    case_id: str
    invoice_id: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    principal_minor: int = Field(gt=0)
    jurisdiction: str
    periods: list[InterestPeriod]
    assessed_at: AwareDatetime


@REGISTRY.register("BalanceConfirmationRequested", 1)
class BalanceConfirmationRequested(EventPayload):
    """The customer is asked to confirm their balance as of a date, or to contest it."""

    confirmation_id: str
    as_of: date
    balances: list[Balance]
    items: list[NoticeItem] = Field(description="the open items making up the balance")
    confirm_url: str
    contest_url: str
    requested_at: AwareDatetime


@REGISTRY.register("BalanceConfirmed", 1)
class BalanceConfirmed(EventPayload):
    confirmation_id: str
    as_of: date
    confirmed_at: AwareDatetime


@REGISTRY.register("BalanceContested", 1)
class BalanceContested(EventPayload):
    """The customer disputes their statement: dunning opens a dispute and pauses."""

    confirmation_id: str
    as_of: date
    reason: str
    contested_at: AwareDatetime


@REGISTRY.register("DisputeOpened", 1)
class DisputeOpened(EventPayload):
    dispute_id: str
    origin: str = Field(description="what opened it, e.g. balance_confirmation")
    reason: str
    invoice_ids: list[str] = Field(default_factory=list, description="empty: the whole account")
    opened_at: AwareDatetime
    reason_code: DisputeReason = Field(default="other", description="what the customer disputes, for reporting")


@REGISTRY.register("DisputeResolved", 1)
class DisputeResolved(EventPayload):
    dispute_id: str
    resolution: str = Field(description="what was decided, in the collector's words")
    resolved_by: str = Field(description="the API key id of whoever resolved it")
    resolved_at: AwareDatetime
    outcome: Literal["accepted", "rejected"] | None = Field(
        default=None, description="accepted: a credit note is requested; rejected: dunning resumes")
    credit_minor: int | None = Field(default=None, gt=0)


@REGISTRY.register("DisputeAgeing", 1)
class DisputeAgeing(EventPayload):
    """A dispute has been open longer than the tenant allows: someone must look at it."""

    dispute_id: str
    reason_code: DisputeReason
    opened_at: AwareDatetime
    age_days: int = Field(ge=0)


@REGISTRY.register("CreditNoteRequested", 1)
class CreditNoteRequested(EventPayload):
    """A collector accepted a dispute: invoicing issues the credit note and applies it."""

    request_id: str = Field(description="idempotency key: the dispute it settles")
    dispute_id: str
    invoice_id: str | None = Field(default=None, description="the invoice credited; none: oldest first")
    invoice_number: str | None = None
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    reason: str
    requested_at: AwareDatetime


@REGISTRY.register("PromiseToPayRecorded", 1)
class PromiseToPayRecorded(EventPayload):
    promise_id: str
    case_id: str
    currency: CurrencyCode
    amount_minor: int = Field(gt=0)
    promised_date: date
    channel: str = Field(description="how it was given: phone, email, sms, letter, portal, in_person")
    taken_by: str
    invoice_ids: list[str]
    recorded_at: AwareDatetime


@REGISTRY.register("PromiseToPayKept", 1)
class PromiseToPayKept(EventPayload):
    promise_id: str
    amount_minor: int
    paid_minor: int
    kept_at: AwareDatetime


@REGISTRY.register("PromiseToPayBroken", 1)
class PromiseToPayBroken(EventPayload):
    """Not paid by the promised day plus grace: dunning resumes where it was; risk counts it."""

    promise_id: str
    amount_minor: int
    paid_minor: int
    promised_date: date
    broken_at: AwareDatetime


class PlanInstalment(BaseModel):
    model_config = ConfigDict(frozen=True)
    sequence: int = Field(ge=1)
    due_date: date
    amount_minor: int = Field(gt=0)


@REGISTRY.register("PaymentPlanAgreed", 1)
class PaymentPlanAgreed(EventPayload):
    plan_id: str
    case_id: str
    currency: CurrencyCode
    total_minor: int = Field(gt=0)
    instalments: list[PlanInstalment]
    invoice_ids: list[str]
    agreed_by: str
    agreed_at: AwareDatetime


@REGISTRY.register("PaymentPlanBroken", 1)
class PaymentPlanBroken(EventPayload):
    """An instalment was missed: dunning resumes on what is still open; risk counts it."""

    plan_id: str
    missed_sequence: int
    paid_minor: int
    broken_at: AwareDatetime


@REGISTRY.register("CaseEscalatedToLegal", 1)
class CaseEscalatedToLegal(EventPayload):
    """The legal step: automatic dunning of the case ends; the case file goes to whoever takes it
    to court (also GET /v1/cases/{case_id}/case-file, as JSON or PDF in the customer's language)."""

    case_id: str
    currency: CurrencyCode
    total_minor: int = Field(ge=0, description="open amounts, fees and interest at the hand-over")
    invoice_ids: list[str]
    case_file: dict = Field(description="statement of account, notices, contact log, promises, plans, disputes,"
                                        " fees and interest")
    escalated_at: AwareDatetime


@REGISTRY.register("PaymentPlanCompleted", 1)
class PaymentPlanCompleted(EventPayload):
    plan_id: str
    paid_minor: int
    completed_at: AwareDatetime


@REGISTRY.register("SettlementOffered", 1)
class SettlementOffered(EventPayload):
    """A collector offered a discount for paying the whole overdue amount of a case by a date."""

    offer_id: str
    case_id: str
    currency: CurrencyCode
    invoice_ids: list[str]
    owed_minor: int = Field(gt=0, description="the overdue amount the offer covers")
    discount_minor: int = Field(gt=0)
    pay_minor: int = Field(gt=0, description="what settles it: owed less the discount")
    pay_by: date
    offered_by: str
    offered_at: AwareDatetime


@REGISTRY.register("SettlementAccepted", 1)
class SettlementAccepted(EventPayload):
    """The customer paid the settlement amount in time. Invoicing credits what the covered
    invoices still owe (at most the discount), once per offer."""

    offer_id: str
    case_id: str
    currency: CurrencyCode
    paid_minor: int = Field(ge=0)
    discount_minor: int = Field(gt=0)
    credit_minor: int = Field(ge=0, description="the credit note to issue: what is still open, at most the discount")
    invoice_numbers: list[str] = Field(description="the covered invoices the credit is applied to, oldest first")
    accepted_at: AwareDatetime


@REGISTRY.register("SettlementOfferEnded", 1)
class SettlementOfferEnded(EventPayload):
    """The offer lapsed unpaid at the end of its pay-by day, or was withdrawn: dunning resumes."""

    offer_id: str
    case_id: str
    outcome: Literal["expired", "withdrawn"]
    paid_minor: int = Field(ge=0)
    ended_at: AwareDatetime


@REGISTRY.register("CollectorTaskCreated", 1)
class CollectorTaskCreated(EventPayload):
    """Work for a person: a call or letter step fell due, or a notice could not be delivered."""

    task_id: str
    case_id: str
    kind: Literal["call", "letter", "contact_failed"]
    step: str
    reason: str | None = Field(default=None, description="contact_failed: why the notifier could not deliver")
    notification_key: str = Field(description="the step's notice (contact_failed: the one that failed)")
    currency: CurrencyCode
    overdue_minor: int = Field(ge=0)
    days_overdue: int
    priority: int = Field(ge=0, description="what is owed (major units) x days overdue")
    invoice_ids: list[str]
    due_at: AwareDatetime
    rule: str | None = Field(default=None, description=(
        "what made it: step (a call or letter step), contact_failed, high_amount, high_risk, unanswered (notices"
        " without any answer), broken_promise, broken_plan, call_back"))
    assigned_to: str | None = Field(default=None, description="the collector it went to; none: the team's queue")


@REGISTRY.register("CollectorTaskAssigned", 1)
class CollectorTaskAssigned(EventPayload):
    """A task went to a collector (by hand, or from the queue once someone had room), or back to
    the queue (assigned_to none)."""

    task_id: str
    assigned_to: str | None
    assigned_by: str = Field(description="the API key id of whoever assigned it, or dunning")
    due_at: AwareDatetime = Field(description="when it falls due, in the collector's working hours")
    assigned_at: AwareDatetime


ContactKind = Literal["call", "visit", "email_in", "letter_in", "note", "correction"]


@REGISTRY.register("ContactLogged", 1)
class ContactLogged(EventPayload):
    """A collector logged an interaction with the customer (a call with its outcome, a visit, a
    letter or email received, a note) or corrected an earlier entry (entries are never edited)."""

    entry_id: str = Field(description="the contact-log entry, also this event's idempotency key")
    kind: ContactKind
    outcome: str | None = Field(default=None, description="of a call: reached, no_answer, wrong_number, promise_taken,"
                                                          " dispute_raised, plan_agreed, call_back, ...")
    note: str | None = None
    task_id: str | None = Field(default=None, description="the collector task it closed")
    corrects: str | None = Field(default=None, description="a correction: the entry it corrects")
    logged_by: str = Field(description="the API key id of whoever logged it")
    logged_at: AwareDatetime


@REGISTRY.register("DunningStepExecuted", 1)
class DunningStepExecuted(EventPayload):
    case_id: str
    invoice_id: str = Field(description="the most advanced invoice of the notice")
    step: str
    channel: Channel
    executed_at: AwareDatetime
    invoice_ids: list[str] = Field(default_factory=list, description="every invoice the notice listed")
    notification_key: str | None = None


class RiskFactor(BaseModel):
    model_config = ConfigDict(frozen=True)
    name: str
    value: float
    points: int = Field(description="contribution to the score (0-100, higher is riskier)")
    explanation: str = Field(description="in plain English; `params` lets a consumer say it in another language")
    params: dict[str, int | float | str] = Field(default_factory=dict,
                                                 description="the numbers the explanation quotes, by name")


RiskGrade = Literal["A", "B", "C", "D"]


@REGISTRY.register("RiskAssessed", 1)
class RiskAssessed(EventPayload):
    score: int = Field(ge=0, le=100)
    segment: RiskSegment = Field(description="the dunning segment the tenant maps the grade to")
    factors: list[RiskFactor]
    assessed_at: AwareDatetime
    grade: RiskGrade | None = Field(default=None, description="A (pays reliably) to D (high risk)")
    previous_grade: RiskGrade | None = None


EarlyWarningSignal = Literal["delay_jump", "exposure_outpacing_payments", "repeated_reversals",
                             "orders_after_broken_promise", "contacts_bouncing"]


@REGISTRY.register("EarlyWarningRaised", 1)
class EarlyWarningRaised(EventPayload):
    warning_id: str
    signal: EarlyWarningSignal
    window_start: AwareDatetime
    window_end: AwareDatetime
    evidence: dict[str, int | float | str | list[str]] = Field(description="the facts the warning rests on")
    explanation: str
    raised_at: AwareDatetime
    group_id: str | None = Field(default=None, description="the dealer group (parent customer) it rolls up to")


CreditLimitSource = Literal["person", "engine", "application"]


@REGISTRY.register("CreditLimitSet", 1)
class CreditLimitSet(EventPayload):
    currency: CurrencyCode
    limit_minor: int = Field(ge=0)
    previous_limit_minor: int | None = None
    source: CreditLimitSource
    set_by: str | None = Field(default=None, description="who set it (a key's label), for a person's limit")
    reason: str | None = None
    set_at: AwareDatetime


@REGISTRY.register("CreditLimitExceeded", 1)
class CreditLimitExceeded(EventPayload):
    currency: CurrencyCode
    limit_minor: int
    exposure_minor: int = Field(description="open receivables of the customer (or its group) in the currency")
    scope: Literal["customer", "group"] = "customer"
    exceeded_at: AwareDatetime


@REGISTRY.register("CreditHoldPlaced", 1)
class CreditHoldPlaced(EventPayload):
    currency: CurrencyCode | None = Field(default=None, description="None: a hold on every currency (manual)")
    reason: Literal["limit_exceeded", "group_limit_exceeded", "manual"]
    limit_minor: int | None = None
    exposure_minor: int | None = None
    placed_by: str | None = None
    placed_at: AwareDatetime


@REGISTRY.register("CreditHoldReleased", 1)
class CreditHoldReleased(EventPayload):
    currency: CurrencyCode | None = None
    reason: Literal["within_limit", "limit_raised", "manual"]
    exposure_minor: int | None = None
    limit_minor: int | None = None
    released_by: str | None = None
    released_at: AwareDatetime


SecurityKind = Literal["deposit", "bank_guarantee", "credit_insurance"]


class SecurityRequirement(BaseModel):
    model_config = ConfigDict(frozen=True)
    kind: SecurityKind
    amount_minor: int = Field(ge=0)


@REGISTRY.register("CreditApplicationDecided", 1)
class CreditApplicationDecided(EventPayload):
    application_id: str
    currency: CurrencyCode
    decision: Literal["approved", "changed", "declined"]
    limit_minor: int = Field(ge=0)
    terms_days: int = Field(ge=0)
    security: list[SecurityRequirement] = Field(default_factory=list)
    recommended_limit_minor: int = Field(ge=0)
    recommended_terms_days: int = Field(ge=0)
    recommended_security: list[SecurityRequirement] = Field(default_factory=list)
    reasons: list[str] = Field(default_factory=list, description="why the engine recommended what it did")
    decided_by: str | None = None
    note: str | None = None
    decided_at: AwareDatetime


