"""The customer portal's use cases. A signed link (in every notice) opens what the customer owes
in their language; what they do there is the same use case a collector's action runs, so it
makes the same events (PromiseToPayRecorded, DisputeOpened, PaymentPlanAgreed), with the
customer as who did it, within what the policy of their oldest open invoice allows."""
from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import date, datetime
from urllib.parse import quote
from zoneinfo import ZoneInfo

import asyncpg

from services.dunning.adapters import case_file
from services.dunning.adapters import portal as store
from services.dunning.adapters.policy_store import PolicyBook, PolicyRef
from services.dunning.domain.policy import SelfService
from services.dunning.domain.portal import (
    PortalLinkError, PortalSubject, SelfServiceError, check_plan, check_promise, link_expiry, sign_link, verify_link,
)
from services.dunning.service_layer.arrangements import Arrangements
from shared.clock import Clock
from shared.http import DomainError

CUSTOMER = "customer"  # who did it, in the events and the contact log
LINK_DAYS_TTL = 60.0  # seconds a tenant's link_days is kept for the notices (a change shows within a minute)


class Portal:
    def __init__(self, pool: asyncpg.Pool, clock: Clock, arrangements: Arrangements, book: PolicyBook,
                 base_url: str | None) -> None:
        self.pool, self.clock, self.arrangements, self.book = pool, clock, arrangements, book
        self.base_url = base_url.rstrip("/") if base_url else None
        self._key: bytes | None = None
        self._link_days: dict[str, tuple[float, int]] = {}  # tenant -> (read at, days): the claim's hot path

    async def key(self) -> bytes:
        if self._key is None:
            self._key = await store.signing_key(self.pool)
        return self._key

    # -- links ------------------------------------------------------------------------------------
    def url(self, token: str) -> str:
        return f"{self.base_url}/{quote(token, safe='')}"

    async def link(self, tenant_id: str, customer_id: str) -> tuple[str, datetime]:
        """A link for one customer (a collector sends it, the notices carry it)."""
        now = self.clock.now()
        expires = link_expiry(now, await store.link_days(self.pool, tenant_id))
        return sign_link(await self.key(), tenant_id, customer_id, expires), expires

    async def notice_links(self, conn: asyncpg.Connection, tenant_id: str, customers: Iterable[str],
                           now: datetime) -> dict[str, dict[str, str]]:
        """customer -> the `links` of their notices: {"portal": url}; none without a portal."""
        if self.base_url is None:
            return {}
        cached = self._link_days.get(tenant_id)
        if cached is None or time.monotonic() - cached[0] > LINK_DAYS_TTL:
            cached = self._link_days[tenant_id] = (time.monotonic(), await store.link_days(conn, tenant_id))
        expires = link_expiry(now, cached[1])
        key = await self.key()
        return {c: {"portal": self.url(sign_link(key, tenant_id, c, expires))} for c in set(customers)}

    async def subject(self, token: str) -> PortalSubject:
        try:
            return verify_link(await self.key(), token, self.clock.now())
        except PortalLinkError as e:
            if e.reason == "expired":
                raise DomainError("token", "this link has expired: the latest notice has a new one", 410) from None
            raise DomainError("token", "this link is not valid", 404) from None

    # -- what the customer sees -------------------------------------------------------------------
    async def view(self, token: str) -> dict:
        who = await self.subject(token)
        async with self.pool.acquire() as conn:
            customer = await store.customer(conn, who.tenant_id, who.customer_id)
            items = await store.open_items(conn, who.tenant_id, who.customer_id)
            settings = await store.settings(conn, who.tenant_id)
            limits = {str(case_id): await self._limits(conn, rows)
                      for case_id, rows in _by_case(items).items()}
        language = customer["language"] if customer else "en"
        instructions = settings["payment_instructions"]
        cases = []
        for case_id, rows in _by_case(items).items():
            lim = limits[str(case_id)]
            cases.append({
                "case_id": str(case_id), "currency": rows[0]["currency"].strip(),
                "open_minor": sum(r["open_minor"] for r in rows),
                "total_minor": sum(r["open_minor"] + r["fees_minor"] + r["interest_minor"] for r in rows),
                "self_service": lim.model_dump() if lim else None,
                "items": [{"invoice_id": str(r["invoice_id"]), "number": r["number"], "due_date": r["due_date"],
                           "amount_minor": r["amount_minor"], "open_minor": r["open_minor"],
                           "fees_minor": r["fees_minor"], "interest_minor": r["interest_minor"],
                           "promised": r["promised"], "in_plan": r["in_plan"], "disputed": r["disputed"]}
                          for r in rows]})
        return {"tenant_id": who.tenant_id, "customer_id": who.customer_id, "language": language,
                "timezone": customer["timezone"] if customer else "UTC", "expires_at": who.expires_at,
                "payment_instructions": instructions.get(language) or instructions.get("en"), "cases": cases,
                "today": self._today(customer)}

    async def statement_pdf(self, token: str) -> tuple[bytes, str]:
        """The statement of what is open, per case, as a PDF in the customer's language."""
        who = await self.subject(token)
        now = self.clock.now()
        async with self.pool.acquire() as conn:
            cases = await conn.fetch("SELECT case_id FROM cases WHERE tenant_id = $1 AND customer_id = $2"
                                     " AND status = 'open' ORDER BY currency", who.tenant_id, who.customer_id)
            documents = [await case_file.build(conn, who.tenant_id, c["case_id"], now) for c in cases]
        pdf = await asyncio.to_thread(case_file.render_statement_pdf, who.customer_id, documents, now)
        return pdf, who.customer_id

    # -- what the customer does -------------------------------------------------------------------
    async def promise(self, token: str, case_id: uuid.UUID, promised_date: date) -> asyncpg.Record:
        who = await self.subject(token)
        async with self.pool.acquire() as conn, conn.transaction():
            free = await self._free_items(conn, who, case_id, "promises", lambda limits, today: check_promise(
                promised_date, today, limits.max_promise_days))
            return await self.arrangements.record_promise(
                who.tenant_id, case_id, amount_minor=sum(r["open_minor"] for r in free), promised_date=promised_date,
                channel="portal", taken_by=CUSTOMER, invoice_ids=[r["invoice_id"] for r in free], grace_days=3,
                note=None, conn=conn)

    async def dispute(self, token: str, invoice_id: uuid.UUID | None, reason_code: str,
                      description: str) -> asyncpg.Record:
        who = await self.subject(token)
        async with self.pool.acquire() as conn, conn.transaction():
            if invoice_id is not None:
                owned = await conn.fetchval(
                    "SELECT true FROM case_items WHERE tenant_id = $1 AND customer_id = $2 AND invoice_id = $3",
                    who.tenant_id, who.customer_id, invoice_id)
                if not owned:  # another customer's invoice is as unknown as a made-up one
                    raise DomainError("invoice_id", "no such open invoice on this account", 404)
            return await self.arrangements.open_dispute(
                who.tenant_id, customer_id=who.customer_id, invoice_id=invoice_id, currency=None,
                reason_code=reason_code, description=description, opened_by=CUSTOMER, conn=conn, origin="portal")

    async def plan(self, token: str, case_id: uuid.UUID, count: int, first_due: date,
                   every_days: int) -> asyncpg.Record:
        who = await self.subject(token)
        async with self.pool.acquire() as conn, conn.transaction():
            free = await self._free_items(conn, who, case_id, "payment plans", lambda limits, today: check_plan(
                count, first_due, every_days, today, max_instalments=limits.max_instalments,
                max_days=limits.max_plan_days, max_first_due_days=limits.max_first_due_days))
            return await self.arrangements.agree_plan(
                who.tenant_id, case_id, instalments=None, count=count, first_due=first_due, every_days=every_days,
                invoice_ids=[r["invoice_id"] for r in free], grace_days=3, agreed_by=CUSTOMER, conn=conn)

    # -- settings (managers) ----------------------------------------------------------------------
    async def settings(self, tenant_id: str) -> dict:
        return await store.settings(self.pool, tenant_id)

    async def put_settings(self, tenant_id: str, instructions: dict[str, str], link_days: int, by: str) -> dict:
        return await store.put_settings(self.pool, tenant_id, instructions, link_days, by, self.clock.now())

    # -- helpers ----------------------------------------------------------------------------------
    async def _case(self, conn: asyncpg.Connection, who: PortalSubject,
                    case_id: uuid.UUID) -> tuple[list[asyncpg.Record], asyncpg.Record | None]:
        rows = [r for r in await store.open_items(conn, who.tenant_id, who.customer_id) if r["case_id"] == case_id]
        if not rows:  # not theirs, closed, or nothing open
            raise DomainError("case_id", "nothing is open under this case on your account", 404)
        return rows, await store.customer(conn, who.tenant_id, who.customer_id)

    async def _free_items(self, conn: asyncpg.Connection, who: PortalSubject, case_id: uuid.UUID, what: str,
                          check: Callable[[SelfService, date], None]) -> list[asyncpg.Record]:
        """The case's open items nothing holds yet (no promise, plan or dispute), once the policy
        lets the customer arrange `what` alone and `check` passes its limits for their today."""
        rows, customer = await self._case(conn, who, case_id)
        limits = await self._limits(conn, rows)
        if limits is None:
            raise DomainError("case_id", f"{what} for this account are agreed by phone: please call us", 409)
        try:
            check(limits, self._today(customer))
        except SelfServiceError as e:
            raise DomainError(e.field, e.reason) from None
        free = [r for r in rows if not (r["promised"] or r["in_plan"] or r["disputed"])]
        if not free:
            raise DomainError("case_id", "everything open here is already promised, in a plan or disputed", 409)
        return free

    async def _limits(self, conn: asyncpg.Connection, rows: list[asyncpg.Record]) -> SelfService | None:
        """The portal section of the policy of the case's oldest open invoice."""
        lead = rows[0]
        return (await self.book.spec(conn, PolicyRef(lead["policy_tenant"], lead["policy_name"],
                                                     lead["policy_version"]))).portal

    def _today(self, customer: asyncpg.Record | None) -> date:
        zone = ZoneInfo(customer["timezone"]) if customer and customer["timezone"] else ZoneInfo("UTC")
        return self.clock.now().astimezone(zone).date()


def _by_case(items: list[asyncpg.Record]) -> dict[uuid.UUID, list[asyncpg.Record]]:
    cases: dict[uuid.UUID, list[asyncpg.Record]] = {}
    for r in items:
        cases.setdefault(r["case_id"], []).append(r)
    for rows in cases.values():
        rows.sort(key=lambda r: (r["due_date"], r["number"]))
    return cases
