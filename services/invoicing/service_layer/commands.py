"""Validated inputs of the invoicing use cases (also the HTTP request bodies)."""
from __future__ import annotations

from datetime import date, datetime, timezone
from functools import lru_cache
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, WithJsonSchema, field_validator, model_validator,
)
from pydantic.networks import validate_email

from shared.contract.money import CurrencyCode
from shared.contract.text import SafeText


@lru_cache(maxsize=100_000)
def _checked_email(value: str) -> str:
    """pydantic's EmailStr check, remembered: the same customers' addresses come with every
    import, and checking one (email-validator) costs more than the rest of an invoice."""
    return validate_email(value)[1]


EmailAddress = Annotated[str, AfterValidator(_checked_email), WithJsonSchema({"type": "string", "format": "email"})]

Identifier = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/\-]*$")

EARLIEST, LATEST = date(1900, 1, 1), date(2999, 12, 31)  # what a receivable can be dated; a typo beyond is caught


def _plausible_date(value: date) -> date:
    if not EARLIEST <= value <= LATEST:
        raise ValueError(f"must be between {EARLIEST} and {LATEST}")
    return value


def _plausible_instant(value: datetime) -> datetime:
    try:
        utc = value.astimezone(timezone.utc)
    except OverflowError:
        utc = None
    if utc is None or not EARLIEST <= utc.date() <= LATEST:
        raise ValueError(f"must be between {EARLIEST} and {LATEST}")
    return value


Text = SafeText
BusinessDate = Annotated[date, AfterValidator(_plausible_date)]
BusinessInstant = Annotated[AwareDatetime, AfterValidator(_plausible_instant)]


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Identifier
    name: Text = Field(min_length=1, max_length=300)
    language: Literal["en", "tr", "cs", "fa"] = "en"
    timezone: str = "UTC"
    email: EmailAddress | None = None
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")
    credit_terms_days: int | None = Field(default=None, ge=0, le=365, description="agreed payment terms in days")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}") from None
        return value


class InvoiceRecord(BaseModel):
    """One invoice as a billing source sends it. (billing source, external_id) identifies it:
    sending it again changes nothing, a changed record adjusts it, status "cancelled" cancels it."""

    model_config = ConfigDict(extra="forbid")
    external_id: str = Identifier
    number: Text | None = Field(default=None, min_length=1, max_length=100)
    billing_source: Text | None = Field(default=None, min_length=1, max_length=100)
    customer: CustomerIn | None = Field(default=None, description="master data; or give customer_id alone")
    customer_id: str | None = Field(default=None, min_length=1, max_length=200,
                                    description="an unknown id creates a placeholder customer")
    currency: CurrencyCode | None = Field(default=None, description="default: the billing source's currency")
    amount_minor: int = Field(gt=0, lt=10**15, description="total in minor units (cents)")
    issue_date: BusinessDate
    due_date: BusinessDate
    status: Literal["open", "cancelled"] = "open"

    @model_validator(mode="after")
    def _consistent(self) -> "InvoiceRecord":
        if self.customer is None and self.customer_id is None:
            raise ValueError("customer or customer_id is required")
        if self.customer is not None and self.customer_id is not None and self.customer_id != self.customer.id:
            raise ValueError("customer_id and customer.id differ")
        if self.due_date < self.issue_date:
            raise ValueError("due_date must not be before issue_date")
        return self

    @property
    def customer_key(self) -> str:
        return self.customer.id if self.customer is not None else self.customer_id  # type: ignore[return-value]


class RecordPayment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_id: str = Identifier
    billing_source: Text | None = Field(default=None, min_length=1, max_length=100)
    customer_id: str = Identifier
    currency: CurrencyCode
    amount_minor: int = Field(gt=0, lt=10**15)
    received_at: BusinessInstant | None = None
    invoice_refs: list[Text] = Field(default_factory=list, max_length=1000, description="invoice numbers or external ids")
    status: Literal["received", "reversed"] = Field(default="received", description='"reversed": the payment bounced')
    reason: Text | None = Field(default=None, max_length=500, description="why it was reversed")


class CreditNoteRecord(BaseModel):
    """A credit note from a billing source: it reduces what the customer owes, applied to the
    invoices it names (else oldest first), the rest kept as credit."""

    model_config = ConfigDict(extra="forbid")
    external_id: str = Identifier
    billing_source: Text | None = Field(default=None, min_length=1, max_length=100)
    customer_id: str = Identifier
    currency: CurrencyCode
    amount_minor: int = Field(gt=0, lt=10**15)
    issue_date: BusinessDate
    invoice_refs: list[Text] = Field(default_factory=list, max_length=1000, description="invoice numbers or external ids")
    reason: Text | None = Field(default=None, max_length=500)
