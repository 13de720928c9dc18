"""The templates a dunning policy may name (shared/contract/templates.py) are the ones the
notifier renders, in every language: a policy validated against the catalogue never asks the
notifier for a message it cannot write."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from shared.contract.templates import LANGUAGES, NOTICE_TEMPLATES

MESSAGES = Path(__file__).resolve().parents[2] / "services" / "notifier" / "templates" / "messages"


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_notifier_renders_every_catalogued_template_in_each_language(language):
    messages = json.loads((MESSAGES / f"{language}.json").read_text(encoding="utf-8"))
    rendered = {name for name, m in messages.items() if isinstance(m, dict) and "subject" in m}
    claimed = {name for name, languages in NOTICE_TEMPLATES.items() if language in languages}
    assert claimed <= rendered, f"{language}: the notifier has no {sorted(claimed - rendered)}"
    assert rendered <= set(NOTICE_TEMPLATES), f"{language}: {sorted(rendered - set(NOTICE_TEMPLATES))} not catalogued"
