"""Credit use cases a person starts: set or remove a limit (their own or the engine's
recommendation), put a customer on hold or lift it, attach a customer to a dealer group, submit a
credit application and decide it. Each runs in one transaction and its events go through the
outbox; a limit change re-checks the exposure at once, as an invoice would."""
from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

import asyncpg

from services.risk.adapters import credit as store
from services.risk.adapters.scorecards import credit_policy
from services.risk.domain.credit import (
    CreditApplicationInput, CreditLine, decide, explain as explain_reason, hold_changes, recommend_for_application,
    recommend_limit,
)
from shared.contract import (
    CreditApplicationDecided, CreditHoldPlaced, CreditHoldReleased, CreditLimitExceeded, CreditLimitSet, Envelope,
    Topics, new_envelope,
)
from shared.contract.events import SecurityRequirement
from shared.http import DomainError
from shared.outbox import add_events

SOURCE = "risk"


def _event(payload, tenant_id: str, at: datetime) -> Envelope:
    return new_envelope(payload, source=SOURCE, tenant_id=tenant_id, subject=payload.customer_id, time=at)


async def credit_view(conn: asyncpg.Connection, tenant_id: str, customer_id: str, now: datetime) -> dict[str, Any]:
    """Limit, exposure, headroom and hold state per currency, the engine's recommendation, and the
    group (its parent's or its own members') when there is one."""
    c = await store.customer_credit(conn, tenant_id, customer_id)
    grade = (await store.grades(conn, tenant_id, [customer_id])).get(customer_id)
    policy, _ = await credit_policy(conn, tenant_id)
    history = await store.invoiced_last_year(conn, tenant_id, customer_id, now)
    exposure = c["group_exposure"] if c["members"] else c["exposure"]
    held = {h["currency"] for h in c["holds"]}
    lines = []
    for cur in sorted(set(c["limits"]) | set(exposure) | set(history) | (held - {"*"})):
        limit = c["limits"].get(cur)
        line = CreditLine(currency=cur, limit_minor=limit["limit_minor"] if limit else None,
                          exposure_minor=exposure.get(cur, 0), held=cur in held or "*" in held)
        invoiced, months = history.get(cur, (0, 0))
        recommended, reasons = recommend_limit(invoiced_last_year_minor=invoiced, months_of_history=months,
                                               terms_days=c["terms_days"], grade=grade, policy=policy)
        lines.append({
            "currency": cur, "limit_minor": line.limit_minor, "exposure_minor": line.exposure_minor,
            "own_exposure_minor": c["exposure"].get(cur, 0), "headroom_minor": line.headroom_minor,
            "held": line.held, "limit_source": limit["source"] if limit else None,
            "limit_set_at": limit["set_at"] if limit else None,
            "recommended_limit_minor": recommended,
            "recommendation_reasons": [explain_reason(r, "en") for r in reasons],
        })
    return {"customer_id": customer_id, "grade": grade, "parent_id": c["parent_id"], "members": c["members"],
            "scope": "group" if c["members"] else "customer", "lines": lines, "holds": c["holds"],
            "on_hold": bool(c["holds"])}


async def _recheck(conn: asyncpg.Connection, topics: Topics, tenant_id: str, owner: str, currency: str,
                   at: datetime) -> list[Envelope]:
    """A limit changed: place or release the automatic hold of that currency now."""
    c = await store.customer_credit(conn, tenant_id, owner)
    scope = "group" if c["members"] else "customer"
    exposure = (c["group_exposure"] if c["members"] else c["exposure"]).get(currency, 0)
    limit = c["limits"].get(currency)
    held = any(h["currency"] == currency and h["kind"] == "limit" for h in c["holds"])
    line = CreditLine(currency=currency, limit_minor=limit["limit_minor"] if limit else None,
                      exposure_minor=exposure, held=held)
    events: list[Envelope] = []
    for change in hold_changes([line]):
        if change.action == "place":
            await store.place_limit_hold(conn, tenant_id, owner, currency, scope, line.limit_minor, exposure, at)
            events += [
                _event(CreditLimitExceeded(customer_id=owner, currency=currency, limit_minor=line.limit_minor,
                                           exposure_minor=exposure, scope=scope, exceeded_at=at), tenant_id, at),
                _event(CreditHoldPlaced(customer_id=owner, currency=currency, limit_minor=line.limit_minor,
                                        reason="group_limit_exceeded" if scope == "group" else "limit_exceeded",
                                        exposure_minor=exposure, placed_at=at), tenant_id, at)]
        else:
            await store.release_limit_hold(conn, tenant_id, owner, currency)
            events.append(_event(CreditHoldReleased(customer_id=owner, currency=currency, reason="limit_raised",
                                                    exposure_minor=exposure, limit_minor=line.limit_minor,
                                                    released_at=at), tenant_id, at))
    return events


async def set_limit(conn: asyncpg.Connection, topics: Topics, tenant_id: str, customer_id: str, currency: str, *,
                    limit_minor: int | None, use_recommendation: bool, by: str, reason: str | None,
                    at: datetime, source: str = "person") -> dict[str, Any]:
    await store.lock_customer(conn, tenant_id, customer_id)
    if use_recommendation:
        view = await credit_view(conn, tenant_id, customer_id, at)
        line = next((x for x in view["lines"] if x["currency"] == currency), None)
        if line is None or not line["recommended_limit_minor"]:
            raise DomainError("use_recommendation", f"no recommendation for {currency}: no invoices in the last year")
        limit_minor, source = line["recommended_limit_minor"], "engine"
        reason = reason or "; ".join(line["recommendation_reasons"])
    previous = await store.set_limit(conn, tenant_id, customer_id, currency, limit_minor, source, by, reason, at)
    events = [_event(CreditLimitSet(customer_id=customer_id, currency=currency, limit_minor=limit_minor or 0,
                                    previous_limit_minor=previous, source=source, set_by=by, reason=reason, set_at=at),
                     tenant_id, at)]
    events += await _recheck(conn, topics, tenant_id, customer_id, currency, at)
    await add_events(conn, topics.risk, events)
    return {"currency": currency, "limit_minor": limit_minor, "previous_limit_minor": previous, "source": source}


async def set_manual_hold(conn: asyncpg.Connection, topics: Topics, tenant_id: str, customer_id: str, *, on: bool,
                          currency: str | None, by: str, reason: str | None, at: datetime) -> bool:
    changed = await store.set_manual_hold(conn, tenant_id, customer_id, currency or "*", on, by, reason, at)
    if changed:
        payload = (CreditHoldPlaced(customer_id=customer_id, currency=currency, reason="manual", placed_by=by,
                                    placed_at=at) if on else
                   CreditHoldReleased(customer_id=customer_id, currency=currency, reason="manual", released_by=by,
                                      released_at=at))
        await add_events(conn, topics.risk, [_event(payload, tenant_id, at)])
    return changed


async def set_parent(conn: asyncpg.Connection, tenant_id: str, customer_id: str, parent_id: str | None) -> None:
    """Groups are one level deep (a dealer and its sub-dealers): a parent has no parent itself."""
    if parent_id == customer_id:
        raise DomainError("parent_id", "a customer cannot be its own parent")
    if parent_id is not None:
        if await store.parent_of(conn, tenant_id, parent_id):
            raise DomainError("parent_id", f"{parent_id!r} belongs to a group itself; groups are one level deep")
        if await store.is_parent(conn, tenant_id, customer_id):
            raise DomainError("parent_id", f"{customer_id!r} has members of its own; it cannot join another group")
    await store.lock_customer(conn, tenant_id, customer_id)
    await store.set_parent(conn, tenant_id, customer_id, parent_id)


async def submit_application(conn: asyncpg.Connection, tenant_id: str, customer_id: str,
                             app: CreditApplicationInput, by: str, at: datetime) -> dict[str, Any]:
    policy, _ = await credit_policy(conn, tenant_id)
    rec = recommend_for_application(app, policy)
    recommendation = _recommendation_doc(rec)
    application_id = await store.add_application(conn, tenant_id, customer_id, app.model_dump(mode="json"),
                                                 recommendation, by, at)
    return {"application_id": str(application_id), "customer_id": customer_id, "status": "pending",
            "recommendation": recommendation}


def _recommendation_doc(rec) -> dict[str, Any]:
    return {"limit_minor": rec.limit_minor, "terms_days": rec.terms_days, "risk_class": rec.risk_class,
            "security": [s.model_dump(mode="json") for s in rec.security],
            "reasons": [{"code": r.code, "params": dict(r.params),
                         "text": {lang: explain_reason(r, lang) for lang in ("en", "tr", "cs", "fa")}}
                        for r in rec.reasons]}


async def decide_application(conn: asyncpg.Connection, topics: Topics, tenant_id: str, application_id: uuid.UUID, *,
                             approve: bool, limit_minor: int | None, terms_days: int | None,
                             security: list[SecurityRequirement] | None, note: str | None, by: str,
                             at: datetime) -> dict[str, Any]:
    found = await store.application(conn, tenant_id, application_id, for_update=True)
    if found is None:
        raise DomainError("application_id", "no such credit application in this tenant", 404)
    if found["status"] != "pending":
        raise DomainError("application_id", f"already decided ({found['status']})", 409)
    app = CreditApplicationInput.model_validate(found["application"])
    policy, _ = await credit_policy(conn, tenant_id)
    rec = recommend_for_application(app, policy)
    try:
        d = decide(rec, approve=approve, limit_minor=limit_minor, terms_days=terms_days, security=security)
    except ValueError as exc:
        field, _, reason = str(exc).partition(": ")
        raise DomainError(field if reason else "decision", reason or str(exc)) from exc
    decision = {"decision": d.decision, "limit_minor": d.limit_minor, "terms_days": d.terms_days,
                "security": [s.model_dump(mode="json") for s in d.security], "note": note}
    await store.decide_application(conn, tenant_id, application_id, d.decision, decision, by, at)
    customer_id = found["customer_id"]
    events = [_event(CreditApplicationDecided(
        customer_id=customer_id, application_id=str(application_id), currency=app.currency, decision=d.decision,
        limit_minor=d.limit_minor, terms_days=d.terms_days, security=list(d.security),
        recommended_limit_minor=rec.limit_minor, recommended_terms_days=rec.terms_days,
        recommended_security=list(rec.security), reasons=[explain_reason(r, "en") for r in rec.reasons],
        decided_by=by, note=note, decided_at=at), tenant_id, at)]
    await add_events(conn, topics.risk, events)
    if d.decision != "declined":
        await set_limit(conn, topics, tenant_id, customer_id, app.currency, limit_minor=d.limit_minor,
                        use_recommendation=False, by=by, reason=f"credit application {application_id}", at=at,
                        source="application")
    return {"application_id": str(application_id), "customer_id": customer_id, **decision}


async def application(conn: asyncpg.Connection, tenant_id: str, application_id: uuid.UUID) -> dict[str, Any] | None:
    found = await store.application(conn, tenant_id, application_id)
    if found is not None:
        found["application_id"] = str(found["application_id"])
    return found


async def group_view(conn: asyncpg.Connection, tenant_id: str, parent_id: str, now: datetime) -> dict[str, Any]:
    view = await credit_view(conn, tenant_id, parent_id, now)
    if not view["members"]:
        raise DomainError("parent_id", f"{parent_id!r} has no members: it is not a group's parent", 404)
    ids = [parent_id, *view["members"]]
    per = await store.exposures(conn, [(tenant_id, m) for m in ids])
    grades = await store.grades(conn, tenant_id, ids)
    holds = await store.holds_of(conn, tenant_id, ids)
    warnings = await store.latest_warnings(conn, tenant_id, ids)
    return {**view, "members": [
        {"customer_id": m, "parent": m == parent_id, "exposure": per.get((tenant_id, m), {}), "grade": grades.get(m),
         "holds": holds.get(m, []), "warnings": warnings.get(m, [])} for m in ids]}
