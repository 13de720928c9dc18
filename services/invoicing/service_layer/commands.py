"""Validated inputs of the invoicing use cases (also the HTTP request bodies)."""
from __future__ import annotations

from datetime import date
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import AwareDatetime, BaseModel, ConfigDict, EmailStr, Field, field_validator, model_validator

from shared.contract.money import CurrencyCode

Identifier = Field(min_length=1, max_length=200, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/\-]*$")


class CustomerIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str = Identifier
    name: str = Field(min_length=1, max_length=300)
    language: Literal["en", "tr", "cs", "fa"] = "en"
    timezone: str = "UTC"
    email: EmailStr | None = None
    phone: str | None = Field(default=None, pattern=r"^\+[1-9][0-9]{6,14}$", description="E.164")

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown IANA timezone {value!r}") from None
        return value


class IssueInvoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_id: str = Identifier
    number: str | None = Field(default=None, min_length=1, max_length=100)
    billing_source: str | None = Field(default=None, min_length=1, max_length=100)
    customer: CustomerIn
    currency: CurrencyCode
    amount_minor: int = Field(gt=0, lt=10**15, description="total in minor units (cents)")
    issue_date: date
    due_date: date

    @model_validator(mode="after")
    def _due_after_issue(self) -> "IssueInvoice":
        if self.due_date < self.issue_date:
            raise ValueError("due_date must not be before issue_date")
        return self


class RecordPayment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    external_id: str = Identifier
    billing_source: str | None = Field(default=None, min_length=1, max_length=100)
    customer_id: str = Identifier
    currency: CurrencyCode
    amount_minor: int = Field(gt=0, lt=10**15)
    received_at: AwareDatetime | None = None
    invoice_refs: list[str] = Field(default_factory=list, max_length=1000, description="invoice numbers or external ids")
