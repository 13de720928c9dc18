"""Balance confirmation: send a customer their balance and open items as of a date, to confirm
or contest through a link. A contest goes to dunning, which opens a dispute."""
from __future__ import annotations

import hashlib
import secrets
import uuid
from datetime import date, timedelta

import asyncpg

from services.invoicing.adapters import repository as repo
from services.invoicing.service_layer.reports import invoices_as_of
from shared.clock import Clock
from shared.contract import (
    BalanceConfirmationRequested, BalanceConfirmed, BalanceContested, Topics, new_envelope,
)
from shared.contract.events import Balance, NoticeItem
from shared.http import DomainError
from shared.outbox import add_events

SOURCE = "invoicing"


def token_hash(token: str) -> str:
    """What is stored of a link's token: the token is a credential (192 random bits), so a plain
    SHA-256 is enough and lets the link be found by it."""
    return hashlib.sha256(token.encode()).hexdigest()


class BalanceConfirmations:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, topics: Topics, public_base_url: str,
                 link_days: int = 30) -> None:
        self.pool, self.clock, self.topics = pool, clock, topics
        self.base = public_base_url.rstrip("/")
        self.link_lifetime = timedelta(days=link_days)

    async def request(self, tenant_id: str, customer_id: str, as_of: date | None = None) -> dict:
        now = self.clock.now()
        as_of = as_of or now.date()
        async with self.pool.acquire() as conn, conn.transaction():
            if await repo.get_customer(conn, tenant_id, customer_id) is None:
                raise DomainError("customer_id", f"no customer {customer_id!r} in this tenant", 404)
            balances = [
                Balance(currency=r["currency"], balance_minor=r["balance"]) for r in await conn.fetch(
                    "SELECT currency, sum(amount_minor)::bigint AS balance FROM ledger_entries"
                    " WHERE tenant_id = $1 AND customer_id = $2 AND booked_on <= $3 GROUP BY currency ORDER BY currency",
                    tenant_id, customer_id, as_of)
            ]
            numbers = {
                str(r["invoice_id"]): r["number"] for r in await conn.fetch(
                    "SELECT invoice_id, number FROM invoices WHERE tenant_id = $1 AND customer_id = $2",
                    tenant_id, customer_id)
            }
            items = [
                NoticeItem(invoice_id=i.invoice_id, number=numbers.get(i.invoice_id, i.invoice_id), currency=i.currency,
                           open_amount_minor=i.open_minor, due_date=i.due_date)
                for i in await invoices_as_of(conn, tenant_id, as_of) if i.customer_id == customer_id
            ]
            confirmation_id, token = uuid.uuid4(), secrets.token_urlsafe(24)
            await conn.execute(
                "INSERT INTO balance_confirmations (tenant_id, confirmation_id, customer_id, as_of, balances,"
                " token_hash, requested_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                tenant_id, confirmation_id, customer_id, as_of, [b.model_dump() for b in balances], token_hash(token),
                now, now + self.link_lifetime,
            )
            url = f"{self.base}/v1/balance-confirmations/{token}"
            event = BalanceConfirmationRequested(
                customer_id=customer_id, confirmation_id=str(confirmation_id), as_of=as_of, balances=balances,
                # Both open the page (a click is a GET, which changes nothing); its buttons POST.
                items=items, confirm_url=f"{url}#confirm", contest_url=f"{url}#contest", requested_at=now)
            await add_events(conn, self.topics.invoicing, [new_envelope(
                event, source=SOURCE, tenant_id=tenant_id, subject=str(confirmation_id), time=now)])
        return {"confirmation_id": str(confirmation_id), "as_of": as_of, "balances": [b.model_dump() for b in balances],
                "url": url}

    def action_url(self, token: str, answer: str) -> str:
        """Where the page's form posts: absolute, from PUBLIC_BASE_URL (a relative action resolves
        against the page's own path, without its token)."""
        return f"{self.base}/v1/balance-confirmations/{token}/{answer}"

    async def find(self, token: str) -> asyncpg.Record | None:
        return await self.pool.fetchrow("SELECT * FROM balance_confirmations WHERE token_hash = $1", token_hash(token))

    def expired(self, row: asyncpg.Record) -> bool:
        return row["status"] == "requested" and self.clock.now() >= row["expires_at"]

    async def answer(self, token: str, contest_reason: str | None) -> str:
        """Confirm (no reason) or contest (with a reason); once only."""
        now = self.clock.now()
        async with self.pool.acquire() as conn, conn.transaction():
            row = await conn.fetchrow("SELECT * FROM balance_confirmations WHERE token_hash = $1 FOR UPDATE",
                                      token_hash(token))
            if row is None:
                raise DomainError("token", "unknown confirmation link", 404)
            if row["status"] != "requested":
                raise DomainError("token", f"this balance was already {row['status']}", 409)
            if self.expired(row):
                raise DomainError("token", "this link has expired; ask us for a new statement", 410)
            status = "confirmed" if contest_reason is None else "contested"
            await conn.execute(
                "UPDATE balance_confirmations SET status = $2, reason = $3, answered_at = $4"
                " WHERE tenant_id = $1 AND confirmation_id = $5",
                row["tenant_id"], status, contest_reason, now, row["confirmation_id"],
            )
            common = {"customer_id": row["customer_id"], "confirmation_id": str(row["confirmation_id"]),
                      "as_of": row["as_of"]}
            event = (BalanceConfirmed(**common, confirmed_at=now) if contest_reason is None
                     else BalanceContested(**common, reason=contest_reason, contested_at=now))
            await add_events(conn, self.topics.invoicing, [new_envelope(
                event, source=SOURCE, tenant_id=row["tenant_id"], subject=str(row["confirmation_id"]), time=now)])
        return status
