"""The notice templates the notifier renders, per language: the contract between a dunning
policy (which names a template for each step) and the notifier (which must have it in the
customer's language). tests/contract checks the notifier's message files against it."""
from __future__ import annotations

from typing import get_args

from shared.contract.events import Language

LANGUAGES: tuple[str, ...] = get_args(Language)

NOTICE_TEMPLATES: dict[str, frozenset[str]] = {
    name: frozenset(LANGUAGES)
    for name in ("reminder_pre_due", "reminder_due", "reminder_overdue", "final_notice", "balance_confirmation",
                 "settlement_offer")
}

# Channels whose step is a message rendered from a template; a collector call is a task and a
# legal hand-over a case file.
RENDERED_CHANNELS = frozenset({"email", "sms", "webhook", "letter"})
