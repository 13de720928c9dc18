"""Dunning policies (parsing, validation, scheduling), consolidation of a case's due steps, and
the policy resolver. Pure code: no database, no broker, no network.

The shipped policy files are read once (they are the subject of the first tests); everything
else is built in memory.
"""
from __future__ import annotations

import re
import textwrap
from datetime import date, datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from services.dunning.adapters.policy_store import SHIPPED, PolicyRef, Resolver
from services.dunning.domain import policy as policy_module
from services.dunning.domain.consolidation import (
    Decision,
    DueStep,
    Item,
    Notice,
    consolidate,
    days_overdue,
)
from services.dunning.domain.policy import (
    ANY_TENANT,
    PolicyError,
    PolicySpec,
    notification_key,
    parse_policy,
    plan_item,
    step_due_at,
)
from shared.contract.templates import LANGUAGES, NOTICE_TEMPLATES, RENDERED_CHANNELS

UTC = timezone.utc
TODAY = date(2026, 3, 20)


# --- helpers ----------------------------------------------------------------------------------


def doc(text: str) -> str:
    """A YAML document written indented in the test, without the indentation."""
    return textwrap.dedent(text).lstrip("\n")


def line_of(text: str, fragment: str) -> int:
    """The 1-based line of the only line of `text` that contains `fragment`."""
    hits = [n for n, line in enumerate(text.splitlines(), start=1) if fragment in line]
    assert len(hits) == 1, f"{fragment!r} is on lines {hits}"
    return hits[0]


def problems(text: str, where: str = "p.yaml") -> list[str]:
    with pytest.raises(PolicyError) as info:
        parse_policy(text, where)
    assert info.value.problems, "a PolicyError always lists its problems"
    assert str(info.value) == "; ".join(info.value.problems)
    return info.value.problems


def only_problem(text: str) -> str:
    found = problems(text)
    assert len(found) == 1, found
    return found[0]


def one_step(step: str, languages: str = "[en, tr, cs, fa]") -> str:
    """A policy with one step given as a YAML flow mapping (on line 5)."""
    return doc(f"""
        name: p
        segment: medium
        languages: {languages}
        steps:
          - {step}
        """)


def parse_one_step(step: str) -> PolicySpec:
    return parse_policy(one_step(step), "p.yaml")


@pytest.fixture(scope="module")
def shipped() -> dict[str, PolicySpec]:
    """The policies shipped as files, by file stem."""
    return {path.stem: parse_policy(path.read_text(encoding="utf-8"), str(path))
            for path in sorted(SHIPPED.glob("*.yaml"))}


# --- shipped policies -------------------------------------------------------------------------


class TestShippedPolicies:
    def test_the_three_segments_are_shipped(self, shipped):
        """gentle/low, standard/medium, strict/high; each file's name is its policy's name."""
        assert {stem: spec.segment for stem, spec in shipped.items()} == {
            "gentle": "low", "standard": "medium", "strict": "high"}
        assert all(spec.name == stem for stem, spec in shipped.items())
        assert all(spec.customer_group is None for spec in shipped.values())

    def test_every_file_parses_with_all_languages(self, shipped):
        """Shipped policies speak every language a customer can have, at 09:00 local."""
        for spec in shipped.values():
            assert sorted(spec.languages) == sorted(LANGUAGES)
            assert spec.send_hour_local == 9

    def test_step_names_are_unique_and_offsets_in_order(self, shipped):
        for spec in shipped.values():
            names = [s.name for s in spec.steps]
            assert len(names) == len(set(names)), spec.name
            offsets = [s.offset_days for s in spec.steps]
            assert offsets == sorted(offsets), spec.name

    def test_strict_is_denser_and_starts_earlier_than_standard(self, shipped):
        strict, standard, gentle = shipped["strict"], shipped["standard"], shipped["gentle"]
        assert len(strict.steps) > len(standard.steps) > len(gentle.steps)
        assert strict.steps[0].offset_days < standard.steps[0].offset_days
        assert min(s.offset_days for s in strict.steps if s.channel == "sms") < \
            min(s.offset_days for s in standard.steps if s.channel == "sms"), "strict sends SMS earlier"

    def test_gentle_sends_email_only(self, shipped):
        assert {s.channel for s in shipped["gentle"].steps} == {"email"}

    def test_every_rendered_step_names_a_catalogued_template(self, shipped):
        for spec in shipped.values():
            for s in spec.steps:
                if s.channel in RENDERED_CHANNELS:
                    assert s.template in NOTICE_TEMPLATES
                    assert set(spec.languages) <= NOTICE_TEMPLATES[s.template]

    def test_slot_is_segment_and_group(self, shipped):
        assert shipped["strict"].slot == ("high", None)


# --- parsing: what is accepted ----------------------------------------------------------------


class TestParseAccepts:
    def test_defaults(self):
        spec = parse_one_step("{name: due, offset_days: 0, channel: email, template: reminder_due}")
        assert spec.send_hour_local == 9
        assert spec.fee_per == "notice"
        assert spec.charges is None
        assert spec.steps[0].fee == {} and spec.steps[0].min_overdue == {}

    @pytest.mark.parametrize(("currency", "amount", "minor"), [
        ("EUR", '"5.00"', 500),
        ("EUR", "5.1", 510),  # an unquoted YAML float
        ("JPY", '"500"', 500),  # no minor unit
        ("KWD", '"1.234"', 1234),  # three decimals
        ("EUR", '"0"', 0),
    ])
    def test_fees_and_minimums_become_minor_units(self, currency, amount, minor):
        """Amounts are major units in YAML and ISO 4217 minor units once parsed."""
        spec = parse_one_step("{name: due, offset_days: 0, channel: email, template: reminder_due,"
                              f" fee: {{{currency}: {amount}}}, min_overdue: {{{currency}: {amount}}}}}")
        assert spec.steps[0].fee == {currency: minor}
        assert spec.steps[0].min_overdue == {currency: minor}

    def test_several_currencies(self):
        spec = parse_one_step("{name: due, offset_days: 0, channel: email, template: reminder_due,"
                              " fee: {EUR: '5.00', JPY: '700', KWD: '1.234'}}")
        assert spec.steps[0].fee == {"EUR": 500, "JPY": 700, "KWD": 1234}

    @given(minor=st.integers(min_value=0, max_value=10**12), currency=st.sampled_from(["EUR", "JPY", "KWD"]))
    @settings(max_examples=50, deadline=None, database=None)
    def test_major_amount_round_trip(self, minor, currency):
        """Whatever minor amount, written in major units with the currency's decimals, comes back."""
        exponent = {"EUR": 2, "JPY": 0, "KWD": 3}[currency]
        major = f"{minor // 10**exponent}" + (f".{minor % 10**exponent:0{exponent}d}" if exponent else "")
        spec = parse_one_step("{name: due, offset_days: 0, channel: email, template: reminder_due,"
                              f" fee: {{{currency}: '{major}'}}}}")
        assert spec.steps[0].fee == {currency: minor}

    def test_steps_without_a_message_need_no_template(self):
        """A collector call is a task and a legal hand-over a case file: no template."""
        spec = parse_policy(doc("""
            name: p
            segment: high
            languages: [en]
            steps:
              - {name: call, offset_days: 20, channel: collector_call}
              - {name: lawyer, offset_days: 30, channel: legal}
            """))
        assert [s.template for s in spec.steps] == [None, None]

    def test_equal_offsets_are_in_order(self):
        """Two steps on the same day (email and SMS) are allowed."""
        spec = parse_policy(doc("""
            name: p
            segment: medium
            languages: [en]
            steps:
              - {name: a, offset_days: 7, channel: email, template: reminder_overdue}
              - {name: b, offset_days: 7, channel: sms, template: reminder_overdue}
            """))
        assert [s.offset_days for s in spec.steps] == [7, 7]

    def test_json_is_accepted(self):
        spec = parse_policy('{"name": "p", "segment": "high", "languages": ["tr"], "customer_group": "vip",'
                            ' "fee_per": "invoice", "steps": [{"name": "a", "offset_days": 1, "channel": "letter",'
                            ' "template": "final_notice"}]}')
        assert (spec.slot, spec.fee_per, spec.steps[0].channel) == (("high", "vip"), "invoice", "letter")

    def test_charges(self):
        spec = parse_policy(doc("""
            name: p
            segment: medium
            languages: [en]
            charges: {jurisdiction: eu-2011-7, interest: false}
            steps:
              - {name: a, offset_days: 7, channel: email, template: reminder_overdue}
            """))
        assert spec.charges is not None
        assert (spec.charges.jurisdiction, spec.charges.interest, spec.charges.compensation) == (
            "eu-2011-7", False, True)

    def test_stored_form_reads_back_the_same(self):
        """Serialised (as the policy store does), fees and minimums are major units again and
        validating the dump gives the same policy."""
        spec = parse_policy(doc("""
            name: p
            segment: medium
            languages: [en]
            charges: {jurisdiction: tr-ttk-1530}
            steps:
              - {name: a, offset_days: 7, channel: email, template: reminder_overdue,
                 fee: {EUR: '5.00', JPY: '500', KWD: '1.234'}, min_overdue: {EUR: '0'}}
            """))
        dumped = spec.model_dump(mode="json")
        assert dumped["steps"][0]["fee"] == {"EUR": "5.00", "JPY": "500", "KWD": "1.234"}
        assert dumped["steps"][0]["min_overdue"] == {"EUR": "0.00"}
        assert PolicySpec.model_validate_json(spec.model_dump_json()) == spec
        assert parse_policy(spec.model_dump_json()) == spec  # JSON is YAML

    @given(minor=st.integers(min_value=0, max_value=10**15 - 1), currency=st.sampled_from(["EUR", "JPY", "KWD", "CLF"]))
    @settings(max_examples=50, deadline=None, database=None)
    def test_stored_amounts_round_trip(self, minor, currency):
        spec = parse_one_step("{name: due, offset_days: 0, channel: email, template: reminder_due}")
        step = spec.steps[0].model_copy(update={"fee": {currency: minor}})
        spec = spec.model_copy(update={"steps": [step]})
        assert PolicySpec.model_validate_json(spec.model_dump_json()).steps[0].fee == {currency: minor}

    def test_a_template_language_not_in_use_does_not_matter(self, monkeypatch):
        """Only the policy's own languages must exist for each template."""
        monkeypatch.setattr(policy_module, "NOTICE_TEMPLATES",
                            {**NOTICE_TEMPLATES, "reminder_due": frozenset({"en", "tr", "cs"})})
        spec = parse_policy(one_step("{name: due, offset_days: 0, channel: email, template: reminder_due}",
                                     languages="[en, tr]"))
        assert spec.languages == ["en", "tr"]


# --- parsing: what is refused, and where ------------------------------------------------------


TWO_STEPS = """
    name: p
    segment: medium
    languages: [en, tr, cs, fa]
    steps:
      - name: first
        offset_days: {first_offset}
        channel: email
        template: reminder_due
      - name: {second_name}
        offset_days: {second_offset}
        channel: {second_channel}
        template: {second_template}
    """


def two_steps(first_offset=0, second_name="second", second_offset=7, second_channel="email",
              second_template="reminder_overdue") -> str:
    return doc(TWO_STEPS.format(first_offset=first_offset, second_name=second_name, second_offset=second_offset,
                                second_channel=second_channel, second_template=second_template))


class TestParseRefuses:
    """Each problem reads "<where> line N, <field>: <reason>", N the line of the offending value."""

    def test_unknown_channel(self):
        text = two_steps(second_channel="pigeon")
        problem = only_problem(text)
        assert problem.startswith(f"p.yaml line {line_of(text, 'channel: pigeon')}, steps.1.channel: ")
        assert "email" in problem  # pydantic names the allowed values

    def test_offsets_out_of_order(self):
        text = two_steps(first_offset=10, second_offset=7)
        problem = only_problem(text)
        assert problem.startswith(f"p.yaml line {line_of(text, 'offset_days: 7')}, steps.1.offset_days: 7 ")
        assert "in order" in problem

    def test_duplicate_step_name(self):
        """The line is the one of the repeated name, not of its first use."""
        text = two_steps(second_name="first")
        second_name_line = [n for n, line in enumerate(text.splitlines(), start=1) if "name: first" in line][1]
        assert only_problem(text) == f"p.yaml line {second_name_line}, steps.1.name: 'first' is used twice"

    def test_unknown_template(self):
        text = two_steps(second_template="no_such_template")
        assert only_problem(text) == (f"p.yaml line {line_of(text, 'no_such_template')}, "
                                      "steps.1.template: unknown template 'no_such_template'")

    def test_template_missing_for_a_language_in_use(self, monkeypatch):
        """The notifier could not render it for a Persian-speaking customer."""
        monkeypatch.setattr(policy_module, "NOTICE_TEMPLATES",
                            {**NOTICE_TEMPLATES, "reminder_overdue": frozenset({"en", "tr", "cs"})})
        text = two_steps()
        assert only_problem(text) == (f"p.yaml line {line_of(text, 'template: reminder_overdue')}, "
                                      "steps.1.template: 'reminder_overdue' has no fa version")

    def test_fee_in_an_unknown_currency(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, fee: {XYZ: '1.00'}}")
        assert only_problem(text) == "p.yaml line 5, steps.0.fee: unknown ISO 4217 currency code 'XYZ'"

    def test_fee_in_an_unknown_currency_block_style(self):
        """In block style the line is the one of the fee's content."""
        text = doc("""
            name: p
            segment: medium
            languages: [en]
            steps:
              - name: due
                offset_days: 0
                channel: email
                template: reminder_due
                fee:
                  XYZ: 1
            """)
        problem = only_problem(text)
        assert problem.startswith(f"p.yaml line {line_of(text, 'XYZ: 1')}, steps.0.fee: ")
        assert "XYZ" in problem

    def test_fee_with_too_many_decimals(self):
        """1.001 EUR is an error, never rounded."""
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, fee: {EUR: '1.001'}}")
        problem = only_problem(text)
        assert problem.startswith("p.yaml line 5, steps.0.fee: ")
        assert "decimals" in problem and "EUR" in problem

    def test_jpy_fee_with_decimals(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, fee: {JPY: '5.5'}}")
        assert only_problem(text).startswith("p.yaml line 5, steps.0.fee: ")

    def test_negative_fee(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, fee: {EUR: '-1.00'}}")
        assert only_problem(text) == "p.yaml line 5, steps.0.fee: EUR: -1.00 is negative"

    def test_negative_minimum(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due,"
                        " min_overdue: {EUR: '-1'}}")
        assert only_problem(text) == "p.yaml line 5, steps.0.min_overdue: EUR: -1 is negative"

    def test_fee_that_is_not_an_amount(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, fee: {EUR: lots}}")
        assert only_problem(text) == "p.yaml line 5, steps.0.fee: EUR: 'lots' is not an amount"

    def test_fee_that_is_not_a_mapping(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, fee: 5}")
        assert only_problem(text).startswith("p.yaml line 5, steps.0.fee: ")

    def test_infinite_fee(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, fee: {EUR: .inf}}")
        assert only_problem(text).startswith("p.yaml line 5, steps.0.fee: ")

    def test_email_step_without_template(self):
        """The line is the step's; the field is the step."""
        text = one_step("{name: due, offset_days: 0, channel: email}")
        assert only_problem(text) == "p.yaml line 5, steps.0: a email step needs a template"

    @pytest.mark.parametrize("channel", sorted(RENDERED_CHANNELS))
    def test_every_message_channel_needs_a_template(self, channel):
        text = one_step(f"{{name: s, offset_days: 0, channel: {channel}}}")
        assert only_problem(text) == f"p.yaml line 5, steps.0: a {channel} step needs a template"

    def test_legal_step_not_last(self):
        text = doc("""
            name: p
            segment: high
            languages: [en]
            steps:
              - {name: due, offset_days: 0, channel: email, template: reminder_due}
              - {name: lawyer, offset_days: 30, channel: legal}
              - {name: after, offset_days: 40, channel: email, template: final_notice}
            """)
        assert only_problem(text) == (f"p.yaml line {line_of(text, 'channel: legal')}, "
                                      "steps.1.channel: the legal hand-over must be the last step")

    def test_bad_indentation_is_not_yaml(self):
        text = "name: p\nsegment: medium\n  languages: [en]\n"
        problem = only_problem(text)
        assert re.fullmatch(r"p\.yaml line 3: not valid YAML \(.+\)", problem), problem

    def test_unclosed_flow_is_not_yaml(self):
        assert "not valid YAML" in only_problem("name: p\nsteps: [\n")

    @pytest.mark.parametrize("text", ["- name: p\n- segment: medium\n", "", "just a string\n", "42\n"])
    def test_a_document_that_is_not_a_mapping(self, text):
        assert only_problem(text) == "p.yaml: a policy is a mapping with name, segment, languages and steps"

    def test_unknown_jurisdiction(self):
        text = doc("""
            name: p
            segment: medium
            languages: [en]
            charges:
              jurisdiction: mars
            steps:
              - {name: due, offset_days: 0, channel: email, template: reminder_due}
            """)
        problem = only_problem(text)
        assert problem.startswith(f"p.yaml line {line_of(text, 'jurisdiction: mars')}, charges.jurisdiction:"
                                  " unknown jurisdiction 'mars'")
        assert "eu-2011-7" in problem  # names what there is

    def test_unknown_top_level_field(self):
        text = doc("""
            name: p
            segment: medium
            languages: [en]
            colour: red
            steps:
              - {name: due, offset_days: 0, channel: email, template: reminder_due}
            """)
        assert only_problem(text) == "p.yaml line 4, colour: Extra inputs are not permitted"

    def test_unknown_step_field(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: reminder_due, colour: red}")
        assert only_problem(text) == "p.yaml line 5, steps.0.colour: Extra inputs are not permitted"

    def test_missing_steps(self):
        assert only_problem("name: p\nsegment: medium\nlanguages: [en]\n") == "p.yaml line 1, steps: Field required"

    @pytest.mark.parametrize(("field", "value"), [
        ("segment", "vip"), ("send_hour_local", "24"), ("fee_per", "month"), ("name", "Bad Name"),
        ("languages", "[de]"), ("languages", "[]"),
    ])
    def test_bad_top_level_values(self, field, value):
        base = {"name": "p", "segment": "medium", "languages": "[en]"}
        base[field] = value
        text = "".join(f"{k}: {v}\n" for k, v in base.items()) + \
            "steps:\n  - {name: due, offset_days: 0, channel: email, template: reminder_due}\n"
        found = problems(text)
        line = next(n for n, row in enumerate(text.splitlines(), start=1) if row.startswith(f"{field}:"))
        assert all(p.startswith(f"p.yaml line {line}, {field}") for p in found), found

    @pytest.mark.parametrize("offset", [-91, 3651])
    def test_offset_out_of_range(self, offset):
        text = one_step(f"{{name: due, offset_days: {offset}, channel: email, template: reminder_due}}")
        assert only_problem(text).startswith("p.yaml line 5, steps.0.offset_days: ")

    def test_every_cross_step_problem_is_reported_with_its_own_line(self):
        """Out of order and a duplicate name at once: two problems, two lines."""
        text = two_steps(first_offset=10, second_name="first", second_offset=7)
        found = problems(text)
        second_name_line = [n for n, line in enumerate(text.splitlines(), start=1) if "name: first" in line][1]
        assert found == [
            f"p.yaml line {line_of(text, 'offset_days: 7')}, steps.1.offset_days: 7 comes before the previous"
            " step's 10 (steps must be in order)",
            f"p.yaml line {second_name_line}, steps.1.name: 'first' is used twice",
        ]

    def test_a_semicolon_in_a_template_name_stays_one_problem(self):
        text = one_step("{name: due, offset_days: 0, channel: email, template: 'a; b'}")
        assert problems(text) == ["p.yaml line 5, steps.0.template: unknown template 'a; b'"]

    def test_where_defaults_to_policy(self):
        with pytest.raises(PolicyError) as info:
            parse_policy("- a\n")
        assert info.value.problems[0].startswith("policy: ")

    def test_policy_error_is_a_value_error(self):
        assert issubclass(PolicyError, ValueError)


# --- scheduling -------------------------------------------------------------------------------


class TestPlanItem:
    def test_plans_are_kept_per_policy_object_never_mixed(self, shipped):
        """Plans are cached by the policy's identity: a second policy of other steps and send hour,
        planned for the same day and timezone, gets its own plan, and a policy equal in content
        but another object is planned afresh, alike."""
        standard, strict = shipped["standard"], shipped["strict"]
        a = plan_item(standard, date(2026, 3, 20), "Europe/Istanbul")
        b = plan_item(strict, date(2026, 3, 20), "Europe/Istanbul")
        assert plan_item(standard, date(2026, 3, 20), "Europe/Istanbul") is a  # kept
        assert [p.name for p in a] == [s.name for s in standard.steps]
        assert [p.name for p in b] == [s.name for s in strict.steps]
        copy = standard.model_copy(update={"send_hour_local": 14})
        later = plan_item(copy, date(2026, 3, 20), "Europe/Istanbul")
        assert all(p.due_at.hour == 11 for p in later) and all(p.due_at.hour == 6 for p in a)

    def test_istanbul_is_utc_plus_three(self, shipped):
        """09:00 in Istanbul is 06:00 UTC, all year (no DST)."""
        planned = plan_item(shipped["standard"], date(2026, 3, 20), "Europe/Istanbul")
        due = next(p for p in planned if p.name == "due")
        assert due.due_at == datetime(2026, 3, 20, 6, tzinfo=UTC)
        assert all(p.due_at.astimezone(UTC).hour == 6 for p in planned)

    def test_new_york_winter_and_summer(self, shipped):
        """09:00 in New York is 14:00 UTC in winter (EST) and 13:00 UTC in summer (EDT)."""
        winter = plan_item(shipped["standard"], date(2026, 1, 15), "America/New_York")
        summer = plan_item(shipped["standard"], date(2026, 7, 15), "America/New_York")
        assert next(p for p in winter if p.name == "due").due_at == datetime(2026, 1, 15, 14, tzinfo=UTC)
        assert next(p for p in summer if p.name == "due").due_at == datetime(2026, 7, 15, 13, tzinfo=UTC)

    def test_local_hour_kept_across_a_dst_change(self, shipped):
        """US DST starts 2026-03-08: the pre-due step before it is 14:00 UTC, the due step 13:00 UTC."""
        planned = {p.name: p for p in plan_item(shipped["strict"], date(2026, 3, 10), "America/New_York")}
        assert planned["pre_due"].due_at == datetime(2026, 3, 5, 14, tzinfo=UTC)
        assert planned["due"].due_at == datetime(2026, 3, 10, 13, tzinfo=UTC)

    def test_negative_and_positive_offsets(self, shipped):
        planned = {p.name: p for p in plan_item(shipped["strict"], date(2026, 3, 20), "Europe/Istanbul")}
        assert planned["pre_due"].due_at == datetime(2026, 3, 15, 6, tzinfo=UTC)  # -5 days
        assert planned["pre_due_sms"].due_at == datetime(2026, 3, 19, 6, tzinfo=UTC)  # -1 day
        assert planned["final_14"].due_at == datetime(2026, 4, 3, 6, tzinfo=UTC)  # +14 days

    def test_every_step_in_order_with_its_template(self, shipped):
        """One planned step per policy step, positions 0..n-1 in policy order, the step's data carried."""
        spec = shipped["standard"]
        planned = plan_item(spec, TODAY, "Europe/Prague")
        assert [p.position for p in planned] == list(range(len(spec.steps)))
        assert [(p.name, p.channel, p.template, p.offset_days) for p in planned] == [
            (s.name, s.channel, s.template, s.offset_days) for s in spec.steps]
        assert [p.due_at for p in planned] == sorted(p.due_at for p in planned)

    def test_send_hour_local(self):
        spec = parse_policy(doc("""
            name: p
            segment: medium
            languages: [en]
            send_hour_local: 18
            steps:
              - {name: due, offset_days: 0, channel: email, template: reminder_due}
            """))
        (planned,) = plan_item(spec, date(2026, 3, 20), "Europe/Istanbul")
        assert planned.due_at == datetime(2026, 3, 20, 15, tzinfo=UTC)

    def test_due_at_is_utc(self):
        at = step_due_at(date(2026, 7, 1), 0, "Asia/Tehran", 9)
        assert at.utcoffset() == timedelta(0)
        assert at == datetime(2026, 7, 1, 5, 30, tzinfo=UTC)  # Iran: UTC+03:30, no DST since 2022

    @given(day=st.dates(min_value=date(2017, 1, 1), max_value=date(2100, 1, 1)),
           offset=st.integers(min_value=-90, max_value=3650), hour=st.integers(min_value=0, max_value=23))
    @settings(max_examples=100, deadline=None, database=None)
    def test_step_due_at_is_the_local_hour_of_the_offset_day(self, day, offset, hour):
        """Istanbul is UTC+3 all year (since 2016-09): the local day `offset` days from the due
        date, at `hour`."""
        local = step_due_at(day, offset, "Europe/Istanbul", hour).astimezone(timezone(timedelta(hours=3)))
        assert (local.date(), local.hour) == (day + timedelta(days=offset), hour)


class TestNotificationKey:
    def test_format(self):
        assert notification_key("case-1", "overdue_7", "email") == "case-1:overdue_7:email"
        assert notification_key("case-1", "overdue_7", "sms", 2) == "case-1:overdue_7:sms:2"

    def test_same_inputs_same_key(self):
        """Retries and redeliveries produce the same key: one notification."""
        assert notification_key("c", "due", "email", 1) == notification_key("c", "due", "email", 1)
        assert notification_key("c", "due", "email") == notification_key("c", "due", "email", 0)

    def test_sequence_channel_and_step_distinguish(self):
        keys = {notification_key("c", "due", "email", n) for n in range(5)}
        keys |= {notification_key("c", "due", "sms"), notification_key("c", "overdue_7", "email"),
                 notification_key("d", "due", "email")}
        assert len(keys) == 8


# --- consolidation ----------------------------------------------------------------------------


def item(invoice_id: str, due_date: date, open_minor: int = 10_000, *, in_dunning: bool = False,
         round: int = 1, fees: int = 0, interest: int = 0) -> Item:
    return Item(invoice_id, f"INV-{invoice_id}", due_date, open_minor, round, in_dunning, fees, interest)


def steps_of(spec: PolicySpec, invoice_id: str, *names: str, round: int = 1, **overrides) -> list[DueStep]:
    """The named steps of a policy, due now for one invoice."""
    out = []
    for position, s in enumerate(spec.steps):
        if s.name in names:
            fields = dict(fee=dict(s.fee), min_overdue=dict(s.min_overdue)) | overrides.get(s.name, {})
            out.append(DueStep(invoice_id, round, s.name, position, s.offset_days, s.channel, s.template, **fields))
    assert len(out) == len(names), names
    return out


def by_channel(decision: Decision) -> dict[str, Notice]:
    return {n.step.channel: n for n in decision.notices}


def listed(notice: Notice) -> list[str]:
    return [i.invoice_id for i in notice.items]


class TestConsolidate:
    def test_two_items_at_the_same_level(self, shipped):
        """One notice per channel, listing both; every due step executed."""
        spec = shipped["standard"]
        items = [item("A", TODAY - timedelta(days=7)), item("B", TODAY - timedelta(days=7))]
        due = (steps_of(spec, "A", "overdue_7", "overdue_7_sms")
               + steps_of(spec, "B", "overdue_7", "overdue_7_sms"))
        decision = consolidate("EUR", items, due, TODAY)
        notices = by_channel(decision)
        assert len(decision.notices) == 2
        assert {c: n.step.name for c, n in notices.items()} == {"email": "overdue_7", "sms": "overdue_7_sms"}
        assert all(listed(n) == ["A", "B"] for n in decision.notices)
        assert decision.executed == {("A", 1, "overdue_7"): "email", ("A", 1, "overdue_7_sms"): "sms",
                                     ("B", 1, "overdue_7"): "email", ("B", 1, "overdue_7_sms"): "sms"}
        assert decision.skipped == {}

    def test_an_outage_sends_only_the_latest_level(self, shipped):
        """Several steps of one item due at once: the latest offset goes out, earlier ones are stale."""
        spec = shipped["standard"]
        items = [item("A", TODAY - timedelta(days=14))]
        due = steps_of(spec, "A", "pre_due", "due", "overdue_7", "overdue_7_sms", "final_14", "final_14_sms")
        decision = consolidate("EUR", items, due, TODAY)
        assert {c: n.step.name for c, n in by_channel(decision).items()} == {"email": "final_14",
                                                                             "sms": "final_14_sms"}
        assert decision.executed == {("A", 1, "final_14"): "email", ("A", 1, "final_14_sms"): "sms"}
        assert decision.skipped == {("A", 1, name): "stale"
                                    for name in ("pre_due", "due", "overdue_7", "overdue_7_sms")}

    def test_the_most_advanced_item_leads(self, shipped):
        """A at +14 (email and SMS), B at 0 (email): notices at A's level list both; B's step is carried."""
        spec = shipped["standard"]
        a, b = item("A", TODAY - timedelta(days=14), 3_000), item("B", TODAY, 5_000)
        due = steps_of(spec, "B", "due") + steps_of(spec, "A", "final_14", "final_14_sms")
        decision = consolidate("EUR", [b, a], due, TODAY)
        notices = by_channel(decision)
        assert {c: n.step.name for c, n in notices.items()} == {"email": "final_14", "sms": "final_14_sms"}
        assert all(n.lead_invoice == "A" for n in decision.notices)
        assert all(listed(n) == ["A", "B"] for n in decision.notices), "oldest due date first"
        assert decision.executed == {("A", 1, "final_14"): "email", ("A", 1, "final_14_sms"): "sms",
                                     ("B", 1, "due"): "email"}
        assert decision.skipped == {}

    def test_a_step_on_a_channel_the_leader_does_not_use_is_carried_by_the_first_notice(self, shipped):
        """B's SMS step at a level where the leader sends email only: carried by the email notice."""
        a, b = item("A", TODAY - timedelta(days=7)), item("B", TODAY + timedelta(days=1))
        # A (gentle policy) is at overdue_7, email only; B (strict policy) is at pre_due_sms
        due = steps_of(shipped["gentle"], "A", "overdue_7") + steps_of(shipped["strict"], "B", "pre_due_sms")
        decision = consolidate("EUR", [a, b], due, TODAY)
        assert [n.step.channel for n in decision.notices] == ["email"]
        assert decision.executed == {("A", 1, "overdue_7"): "email", ("B", 1, "pre_due_sms"): "email"}

    def test_ties_go_to_the_furthest_step_then_the_oldest_due_date(self, shipped):
        spec = shipped["standard"]
        older, newer = item("A", TODAY - timedelta(days=8)), item("B", TODAY - timedelta(days=7))
        due = steps_of(spec, "B", "overdue_7") + steps_of(spec, "A", "overdue_7")
        assert consolidate("EUR", [newer, older], due, TODAY).notices[0].lead_invoice == "A"
        due = steps_of(spec, "B", "overdue_7_sms") + steps_of(spec, "A", "overdue_7")
        decision = consolidate("EUR", [newer, older], due, TODAY)
        assert {n.lead_invoice for n in decision.notices} == {"B"}  # position 3 beats position 2

    def test_an_item_in_dunning_without_a_due_step_is_listed(self, shipped):
        """Sent to before, nothing due now: still listed. Never in dunning, nothing due: not listed."""
        spec = shipped["standard"]
        a = item("A", TODAY - timedelta(days=14))
        c = item("C", TODAY - timedelta(days=3), in_dunning=True)
        d = item("D", TODAY - timedelta(days=1), in_dunning=False)
        decision = consolidate("EUR", [a, c, d], steps_of(spec, "A", "final_14", "final_14_sms"), TODAY)
        assert len(decision.notices) == 2
        assert all(listed(n) == ["A", "C"] for n in decision.notices)
        assert all(key[0] == "A" for key in [*decision.executed, *decision.skipped])

    def test_no_due_steps_no_decision(self, shipped):
        decision = consolidate("EUR", [item("A", TODAY, in_dunning=True)], [], TODAY)
        assert (decision.executed, decision.skipped, decision.notices) == ({}, {}, [])

    def test_due_steps_of_items_not_passed_send_nothing(self, shipped):
        """Steps of an item that is not among the open, un-paused items do not lead a notice."""
        spec = shipped["standard"]
        decision = consolidate("EUR", [item("A", TODAY)], steps_of(spec, "Z", "final_14"), TODAY)
        assert decision.notices == [] and decision.executed == {}

    def test_notice_carries_the_leaders_step(self, shipped):
        spec = shipped["standard"]
        due = steps_of(spec, "A", "final_14", final_14={"fee": {"EUR": 500}})
        (notice,) = consolidate("EUR", [item("A", TODAY - timedelta(days=14))], due, TODAY).notices
        assert notice.step == due[0]
        assert (notice.step.template, notice.step.fee) == ("final_notice", {"EUR": 500})


class TestMinimumOverdue:
    """A step's min_overdue (in the case's currency): below it nothing is sent, the steps are skipped."""

    def overdue_case(self, spec, open_a: int, minimum: dict[str, int]):
        a = item("A", TODAY - timedelta(days=7), open_a)  # overdue
        b = item("B", TODAY, 100_000)  # due today: not overdue
        due = steps_of(spec, "A", "overdue_7", overdue_7={"min_overdue": minimum}) + steps_of(spec, "B", "due")
        return [a, b], due

    def test_overdue_step_below_the_minimum(self, shipped):
        """Overdue is what is past its due date among the listed items: B (due today) does not count."""
        items, due = self.overdue_case(shipped["gentle"], 4_999, {"EUR": 5_000})
        decision = consolidate("EUR", items, due, TODAY)
        assert decision.notices == [] and decision.executed == {}
        assert decision.skipped == {("A", 1, "overdue_7"): "below_minimum", ("B", 1, "due"): "below_minimum"}

    def test_overdue_step_at_the_minimum(self, shipped):
        items, due = self.overdue_case(shipped["gentle"], 5_000, {"EUR": 5_000})
        decision = consolidate("EUR", items, due, TODAY)
        assert [n.step.name for n in decision.notices] == ["overdue_7"]
        assert set(decision.executed) == {("A", 1, "overdue_7"), ("B", 1, "due")}

    def test_overdue_counts_every_listed_overdue_item(self, shipped):
        """An item in dunning with nothing due adds its overdue amount."""
        items, due = self.overdue_case(shipped["gentle"], 3_000, {"EUR": 5_000})
        items.append(item("C", TODAY - timedelta(days=1), 2_000, in_dunning=True))
        assert len(consolidate("EUR", items, due, TODAY).notices) == 1
        items[-1] = item("C", TODAY - timedelta(days=1), 2_000, in_dunning=False)  # not listed: not counted
        assert consolidate("EUR", items, due, TODAY).notices == []

    def test_a_minimum_in_another_currency_does_not_apply(self, shipped):
        items, due = self.overdue_case(shipped["gentle"], 1, {"USD": 10**9})
        assert len(consolidate("EUR", items, due, TODAY).notices) == 1

    @pytest.mark.parametrize(("open_b", "sent"), [(1_999, False), (2_000, True)])
    def test_pre_due_step_compares_the_listed_total(self, shipped, open_b, sent):
        """Before the due date nothing is overdue: the minimum is compared to what is owed."""
        spec = shipped["standard"]
        a, b = item("A", TODAY + timedelta(days=3), 3_000), item("B", TODAY + timedelta(days=3), open_b)
        due = (steps_of(spec, "A", "pre_due", pre_due={"min_overdue": {"EUR": 5_000}})
               + steps_of(spec, "B", "pre_due", pre_due={"min_overdue": {"EUR": 5_000}}))
        decision = consolidate("EUR", [a, b], due, TODAY)
        assert bool(decision.notices) is sent
        if sent:
            assert set(decision.executed) == {("A", 1, "pre_due"), ("B", 1, "pre_due")}
        else:
            assert decision.skipped == {("A", 1, "pre_due"): "below_minimum", ("B", 1, "pre_due"): "below_minimum"}

    def test_a_channel_below_its_minimum_does_not_stop_the_others(self, shipped):
        """The email step has a minimum the case does not reach; the SMS step has none and goes out."""
        spec = shipped["standard"]
        a = item("A", TODAY - timedelta(days=7), 1_000)
        due = steps_of(spec, "A", "overdue_7", "overdue_7_sms", overdue_7={"min_overdue": {"EUR": 5_000}})
        decision = consolidate("EUR", [a], due, TODAY)
        assert [n.step.channel for n in decision.notices] == ["sms"]
        assert decision.executed == {("A", 1, "overdue_7_sms"): "sms"}
        assert decision.skipped == {("A", 1, "overdue_7"): "below_minimum"}


class TestNoticeAmounts:
    @pytest.mark.parametrize(("due_date", "days"), [
        (TODAY + timedelta(days=5), 0), (TODAY, 0), (TODAY - timedelta(days=1), 1), (TODAY - timedelta(days=40), 40)])
    def test_days_overdue_is_never_negative(self, due_date, days):
        assert days_overdue(item("A", due_date), TODAY) == days

    def test_total_sums_open_fees_and_interest(self, shipped):
        a = item("A", TODAY - timedelta(days=14), 10_000, fees=500, interest=37)
        b = item("B", TODAY - timedelta(days=3), 2_500, in_dunning=True, fees=40, interest=3)
        (notice, _) = consolidate("EUR", [a, b], steps_of(shipped["standard"], "A", "final_14", "final_14_sms"),
                                  TODAY).notices
        assert notice.total_minor() == 10_000 + 500 + 37 + 2_500 + 40 + 3


# --- consolidation: properties ----------------------------------------------------------------

STRICT_STEPS = [  # (name, offset, channel, template) of the shipped strict policy, kept literal here
    ("pre_due", -5, "email", "reminder_pre_due"), ("pre_due_sms", -1, "sms", "reminder_pre_due"),
    ("due", 0, "email", "reminder_due"), ("overdue_3", 3, "sms", "reminder_overdue"),
    ("overdue_7", 7, "email", "reminder_overdue"), ("overdue_7_sms", 7, "sms", "reminder_overdue"),
    ("final_14", 14, "email", "final_notice"), ("final_14_sms", 14, "sms", "final_notice"),
    ("call", 20, "collector_call", None), ("letter", 20, "letter", "final_notice"),
]


@st.composite
def cases(draw):
    """Open items of one case and, for each, a random subset of its steps due now."""
    n = draw(st.integers(min_value=1, max_value=5))
    numbers = draw(st.permutations(range(n)))  # invoice numbers are unique, in any order of ids
    items, due = [], []
    for k in range(n):
        invoice_id = f"I{k}"
        it = Item(invoice_id, f"N{numbers[k]}", TODAY + timedelta(days=draw(st.integers(-30, 10))),
                  draw(st.integers(0, 20_000)), draw(st.integers(1, 2)), draw(st.booleans()),
                  draw(st.integers(0, 1_000)), draw(st.integers(0, 1_000)))
        items.append(it)
        chosen = draw(st.sets(st.integers(0, len(STRICT_STEPS) - 1), max_size=4))
        for position in sorted(chosen):
            name, offset, channel, template = STRICT_STEPS[position]
            minimum = draw(st.one_of(st.just({}), st.dictionaries(st.sampled_from(["EUR", "USD"]),
                                                                    st.integers(0, 30_000), max_size=2)))
            due.append(DueStep(invoice_id, it.round, name, position, offset, channel, template, {}, minimum))
    return items, draw(st.permutations(due))


class TestConsolidateProperties:
    @given(case=cases())
    @settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
    def test_invariants(self, case):
        items, due = case
        decision = consolidate("EUR", items, list(due), TODAY)
        keys = [s.key for s in due]
        # every due step is decided exactly once
        assert not set(decision.executed) & set(decision.skipped)
        assert sorted([*decision.executed, *decision.skipped]) == sorted(keys)
        # at most one notice per channel, all led by the same item, which they list
        channels = [n.step.channel for n in decision.notices]
        assert len(channels) == len(set(channels))
        assert len({n.lead_invoice for n in decision.notices}) <= 1
        for notice in decision.notices:
            assert notice.lead_invoice in listed(notice)
            assert notice.step.invoice_id == notice.lead_invoice
            assert notice.total_minor() == sum(i.open_minor + i.fees_minor + i.interest_minor for i in notice.items)
        # nothing is executed without a notice, and each executed step names a channel sent on
        if decision.executed:
            assert decision.notices
        assert set(decision.executed.values()) <= set(channels)
        # only an item's latest level can be executed; what it passed is stale
        top = {}
        for s in due:
            top[s.invoice_id] = max(top.get(s.invoice_id, s.offset_days), s.offset_days)
        for s in due:
            if s.offset_days < top[s.invoice_id]:
                assert decision.skipped[s.key] == "stale"
        assert set(decision.skipped.values()) <= {"stale", "below_minimum"}
        # the leader is at the highest level of the case
        if decision.notices:
            assert decision.notices[0].step.offset_days == max(top.values())

    @given(case=cases())
    @settings(max_examples=100, deadline=None, database=None)
    def test_input_order_does_not_matter(self, case):
        items, due = case
        one = consolidate("EUR", items, list(due), TODAY)
        other = consolidate("EUR", list(reversed(items)), list(reversed(due)), TODAY)
        assert (one.executed, one.skipped) == (other.executed, other.skipped)
        assert sorted((n.step.key, listed(n)) for n in one.notices) == \
            sorted((n.step.key, listed(n)) for n in other.notices)


# --- resolver ---------------------------------------------------------------------------------


def ref(tenant: str, name: str) -> PolicyRef:
    return PolicyRef(tenant, name, 1)


FULL = {
    ("t1", "high", "vip"): ref("t1", "own-high-vip"),
    ("t1", "high", None): ref("t1", "own-high"),
    (ANY_TENANT, "high", "vip"): ref(ANY_TENANT, "shipped-high-vip"),
    (ANY_TENANT, "high", None): ref(ANY_TENANT, "shipped-high"),
    (ANY_TENANT, "medium", None): ref(ANY_TENANT, "standard"),
}


class TestResolver:
    """tenant+segment+group, tenant+segment, '*'+segment+group, '*'+segment, '*'+medium."""

    @pytest.mark.parametrize(("removed", "expected"), [
        ([], "own-high-vip"),
        ([("t1", "high", "vip")], "own-high"),
        ([("t1", "high", "vip"), ("t1", "high", None)], "shipped-high-vip"),
        ([("t1", "high", "vip"), ("t1", "high", None), (ANY_TENANT, "high", "vip")], "shipped-high"),
        ([("t1", "high", "vip"), ("t1", "high", None), (ANY_TENANT, "high", "vip"), (ANY_TENANT, "high", None)],
         "standard"),
    ])
    def test_fallback_order(self, removed, expected):
        active = {k: v for k, v in FULL.items() if k not in removed}
        assert Resolver(active)("t1", "high", "vip").name == expected

    def test_a_customer_without_group_ignores_group_policies(self):
        assert Resolver(FULL)("t1", "high", None).name == "own-high"
        active = {k: v for k, v in FULL.items() if k != ("t1", "high", None)}
        assert Resolver(active)("t1", "high", None).name == "shipped-high"

    def test_another_tenants_policies_do_not_apply(self):
        assert Resolver(FULL)("t2", "high", "vip").name == "shipped-high-vip"
        assert Resolver(FULL)("t2", "high", "other").name == "shipped-high"

    @pytest.mark.parametrize("segment", [None, ""])
    def test_no_segment_means_medium(self, segment):
        active = {**FULL, ("t1", "medium", None): ref("t1", "own-medium")}
        assert Resolver(active)("t1", segment, None).name == "own-medium"

    def test_unknown_segment_falls_back_to_the_shipped_medium(self):
        """Not the tenant's own medium policy: the last resort is the shipped one."""
        active = {**FULL, ("t1", "medium", None): ref("t1", "own-medium")}
        assert Resolver(active)("t1", "low", None).name == "standard"

    def test_nothing_active(self):
        with pytest.raises(LookupError, match="t1"):
            Resolver({})("t1", "high", None)
        with pytest.raises(LookupError):
            Resolver({("t1", "medium", None): ref("t1", "own-medium")})("t2", None, None)
