"""Template previews: a notice rendered exactly as a customer would get it (the tenant's
languages and wording), for a sample, given items, or a real case's latest notice."""
from __future__ import annotations

from typing import Any

import asyncpg

from services.notifier.adapters import store
from services.notifier.adapters.store import ContactRules
from services.notifier.adapters.templates import (
    Notice,
    TemplateRejected,
    TemplateTexts,
    render_email,
    render_sms,
    sample_notice,
    validate_override,
)
from shared.http import DomainError

PREVIEW_UNSUBSCRIBE = "https://example.invalid/v1/unsubscribe/preview"


async def preview_notice(pool: asyncpg.Pool, default_rules: ContactRules, tenant_id: str, template: str,
                         language: str, *, case_id: str | None = None, items: list[dict] | None = None,
                         name: str | None = None, overrides: dict[str, TemplateTexts] | None = None) -> dict[str, Any]:
    """The email (subject, text, HTML) and the SMS (text, encoding, segments) of `template`.
    `overrides`: wording to try before saving it (validated); None: the tenant's saved wording."""
    rules = (await store.tenant_rules(pool, [tenant_id], default_rules))[tenant_id]
    notice = sample_notice(template)
    if case_id:
        row = await store.latest_notice_of_case(pool, tenant_id, case_id)
        if row is None:
            raise DomainError("case_id", "no notice of this case has reached the notifier", 404)
        notice = Notice(template=template, name=row["name"] or row["customer_id"], items=row["items"],
                        links=row["links"] or {}, balances=row["balances"] or [], offer=row["offer"])
    notice = Notice(template=template, name=name or notice.name, items=items or notice.items, links=notice.links,
                    balances=notice.balances, offer=notice.offer, unsubscribe_url=PREVIEW_UNSUBSCRIBE)
    if overrides is not None:
        try:
            validate_override(template, overrides, sms_segment_limit=rules.sms_segment_limit)
        except TemplateRejected as exc:
            raise DomainError(f"overrides.{exc.field.removeprefix('languages.')}", exc.reason) from None
    else:
        overrides = (await store.template_overrides(pool, [(tenant_id, template)])).get((tenant_id, template))
    options: dict[str, Any] = {"offered": rules.languages, "default_language": rules.default_language,
                               "overrides": overrides}
    try:
        email = render_email(notice, language, **options)
        sms = render_sms(notice, language, **options)
    except Exception as exc:  # noqa: BLE001 - a saved wording that no longer renders is the tenant's to fix
        raise DomainError("template", f"does not render: {exc}") from None
    return {"template": template, "language": email.language, "fallback_from": email.fallback_from,
            "subject": email.subject, "text": email.text, "html": email.html,
            "sms": {"text": sms.text, "encoding": sms.encoding, "segments": sms.segments,
                    "limit": rules.sms_segment_limit}}
