"""Credit: application recommendations, an existing customer's limit, decisions, holds and the
reasons in four languages. Pure, no I/O. Amounts are EUR minor units (100 = 1.00 EUR); the
default policy's step is 100_000 (1,000.00 EUR)."""
from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from services.risk.domain.credit import (
    LANGUAGES,
    REASON_CODES,
    Band,
    CreditApplicationInput,
    CreditLine,
    CreditPolicy,
    CreditRecommendation,
    HoldChange,
    Reason,
    SectorRisk,
    decide,
    explain,
    hold_changes,
    recommend_for_application,
    recommend_limit,
    roll_up,
)
from shared.contract.events import SecurityRequirement

POLICY = CreditPolicy()
PERSIAN_DIGITS = set("۰۱۲۳۴۵۶۷۸۹")


def application(**overrides) -> CreditApplicationInput:
    """A healthy applicant: low-risk sector, long trading, good score, 1,000,000.00 EUR revenue."""
    fields = dict(sector="it_services", years_trading=Decimal(10), declared_revenue_minor=100_000_000,
                  currency="EUR", requested_limit_minor=10_000_000, requested_terms_days=30, bureau_score=80,
                  security_offered=[])
    return CreditApplicationInput(**(fields | overrides))


def offered(**amounts: int) -> list[SecurityRequirement]:
    return [SecurityRequirement(kind=kind, amount_minor=amount) for kind, amount in amounts.items()]


def codes(rec: CreditRecommendation) -> list[str]:
    return [r.code for r in rec.reasons]


def reason(rec: CreditRecommendation, code: str) -> Reason:
    return next(r for r in rec.reasons if r.code == code)


def security(rec: CreditRecommendation) -> dict[str, int]:
    return {s.kind: s.amount_minor for s in rec.security}


class TestBaseRecommendation:
    def test_healthy_applicant_gets_the_request_in_full(self):
        rec = recommend_for_application(application(), POLICY)
        # 100_000_000 revenue × 0.10 share × 1.0 (it_services) × 1.0 (10 years) × 1.0 (score 80) = 10_000_000
        assert rec.limit_minor == 10_000_000
        assert rec.terms_days == 30
        assert rec.security == ()
        assert rec.risk_class == "low"
        assert codes(rec) == ["sector_risk", "revenue_share"]
        assert reason(rec, "sector_risk").params == {"sector": "it_services", "risk": "low", "factor": 100}
        assert reason(rec, "revenue_share").params == {"share": 10}

    def test_young_company_with_middling_score(self):
        rec = recommend_for_application(application(
            sector="manufacturing", years_trading=Decimal("1.5"), bureau_score=50), POLICY)
        # 100_000_000 × 0.10 × 1.0 (manufacturing) × 0.5 (< 2 years) × 0.8 (40 <= 50 < 70) = 4_000_000
        assert rec.limit_minor == 4_000_000
        assert rec.risk_class == "medium"
        assert reason(rec, "young_company").params == {"years": 1.5, "factor": 50}
        assert reason(rec, "bureau_score").params == {"score": 50, "factor": 80}
        assert reason(rec, "requested_above_recommendation").params == {
            # ceiling: 4_000_000 × 2 (guarantee_max_multiple) = 8_000_000
            "currency": "EUR", "requested_minor": 10_000_000, "recommended_minor": 4_000_000,
            "ceiling_minor": 8_000_000}
        assert rec.security == ()

    @pytest.mark.parametrize(("years", "expected"), [
        ("0", 5_000_000),     # 10_000_000 × 0.5
        ("1.99", 5_000_000),  # 10_000_000 × 0.5
        ("2", 8_000_000),     # a band's `below` is exclusive: 2 years is in the 2–5 band, × 0.8
        ("4.9", 8_000_000),   # 10_000_000 × 0.8
        ("5", 10_000_000),    # 10_000_000 × 1.0
        ("200", 10_000_000),  # 10_000_000 × 1.0
    ])
    def test_years_trading_bands(self, years, expected):
        assert recommend_for_application(application(years_trading=Decimal(years)), POLICY).limit_minor == expected

    @pytest.mark.parametrize(("score", "expected", "code"), [
        (0, 5_000_000, "bureau_score"),     # 10_000_000 × 0.5
        (39, 5_000_000, "bureau_score"),    # 10_000_000 × 0.5
        (40, 8_000_000, "bureau_score"),    # 10_000_000 × 0.8
        (69, 8_000_000, "bureau_score"),    # 10_000_000 × 0.8
        (70, 10_000_000, None),             # 10_000_000 × 1.0: no reduction, no reason
        (100, 10_000_000, None),
        (None, 8_000_000, "no_bureau_score"),  # 10_000_000 × 0.8 without a score
    ])
    def test_bureau_score_bands(self, score, expected, code):
        rec = recommend_for_application(application(bureau_score=score), POLICY)
        assert rec.limit_minor == expected
        assert {"bureau_score", "no_bureau_score"} & set(codes(rec)) == ({code} if code else set())

    def test_limit_rounds_down_to_the_step(self):
        rec = recommend_for_application(application(declared_revenue_minor=123_456_789,
                                                    requested_limit_minor=20_000_000), POLICY)
        # 123_456_789 × 0.10 = 12_345_678.9 -> down to a multiple of 100_000 = 12_300_000
        assert rec.limit_minor == 12_300_000

    def test_sector_factor_applies(self):
        rec = recommend_for_application(application(sector="hospitality", requested_limit_minor=50_000_000), POLICY)
        # 100_000_000 × 0.10 × 0.7 (hospitality) = 7_000_000
        assert rec.limit_minor == 7_000_000
        assert rec.risk_class == "high"

    def test_sector_is_found_whatever_its_case_and_spacing(self):
        rec = recommend_for_application(application(sector="  Public Sector ", requested_limit_minor=50_000_000),
                                        POLICY)
        # 100_000_000 × 0.10 × 1.2 (public_sector) = 12_000_000
        assert rec.limit_minor == 12_000_000
        assert reason(rec, "sector_risk").params["sector"] == "public_sector"

    def test_unknown_sector_is_medium_risk(self):
        rec = recommend_for_application(application(sector="space mining", requested_terms_days=90), POLICY)
        # 100_000_000 × 0.10 × 1.0 (default factor) = 10_000_000; medium terms at most 45
        assert (rec.limit_minor, rec.terms_days, rec.risk_class) == (10_000_000, 45, "medium")
        assert reason(rec, "sector_risk").params == {"sector": "space_mining", "risk": "medium", "factor": 100}

    def test_a_lower_request_is_granted_down_to_the_step(self):
        rec = recommend_for_application(application(requested_limit_minor=2_550_000), POLICY)
        # recommended 10_000_000; 2_550_000 requested -> down to a multiple of 100_000 = 2_500_000
        assert rec.limit_minor == 2_500_000
        assert reason(rec, "requested_below_recommendation").params == {
            "currency": "EUR", "requested_minor": 2_550_000, "recommended_minor": 10_000_000,
            "limit_minor": 2_500_000}

    def test_a_higher_request_without_security_gets_the_recommendation(self):
        rec = recommend_for_application(application(requested_limit_minor=15_000_000), POLICY)
        assert rec.limit_minor == 10_000_000
        assert rec.security == ()
        assert "requested_above_recommendation" in codes(rec)


class TestTerms:
    @pytest.mark.parametrize(("sector", "requested", "granted"), [
        ("it_services", 90, 60),   # low: at most 60
        ("retail", 60, 45),        # medium: at most 45
        ("hospitality", 60, 30),   # high: at most 30
        ("construction", 60, 14),  # very high: at most 14
        ("hospitality", 30, 30),   # at the cap: as requested
        ("hospitality", 0, 0),     # cash on delivery stays so
    ])
    def test_terms_capped_by_risk_class(self, sector, requested, granted):
        rec = recommend_for_application(application(sector=sector, requested_terms_days=requested), POLICY)
        assert rec.terms_days == granted
        assert ("terms_capped" in codes(rec)) == (requested > granted)

    def test_terms_capped_reason(self):
        rec = recommend_for_application(application(sector="transport", requested_terms_days=60), POLICY)
        assert reason(rec, "terms_capped").params == {"max_days": 30, "requested_days": 60, "risk": "high"}


class TestSecurity:
    def test_very_high_risk_pays_a_deposit(self):
        rec = recommend_for_application(application(sector="construction", requested_limit_minor=5_000_000), POLICY)
        # 100_000_000 × 0.10 × 0.5 (construction) = 5_000_000; deposit 5_000_000 × 0.20 = 1_000_000
        assert rec.limit_minor == 5_000_000
        assert rec.risk_class == "very_high"
        assert security(rec) == {"deposit": 1_000_000}
        assert reason(rec, "security_deposit").params == {
            "currency": "EUR", "amount_minor": 1_000_000, "share": 20, "risk": "very_high"}

    def test_high_risk_pays_no_deposit_by_default_but_a_tenant_can_ask_for_one(self):
        rec = recommend_for_application(application(sector="hospitality", requested_limit_minor=7_000_000), POLICY)
        assert rec.security == ()
        strict = CreditPolicy(deposit_risk_classes={"high", "very_high"})
        rec = recommend_for_application(application(sector="hospitality", requested_limit_minor=7_000_000), strict)
        assert security(rec) == {"deposit": 1_400_000}  # 7_000_000 × 0.20

    @pytest.mark.parametrize(("revenue", "deposit"), [
        (500, 3),  # 500 × 0.10 × 0.5 = 25 limit; 25 × 0.10 = 2.5 -> half-up 3 (half-even would give 2)
        (300, 2),  # 15 limit; 1.5 -> 2
        (280, 1),  # 14 limit; 1.4 -> 1
    ])
    def test_deposit_rounds_half_up(self, revenue, deposit):
        policy = CreditPolicy(rounding_minor=1, deposit_share=Decimal("0.10"))
        rec = recommend_for_application(application(sector="construction", declared_revenue_minor=revenue,
                                                    requested_limit_minor=1_000), policy)
        assert security(rec) == {"deposit": deposit}

    def test_no_deposit_on_a_zero_limit(self):
        policy = CreditPolicy(rounding_minor=1_000)
        rec = recommend_for_application(application(sector="construction", declared_revenue_minor=1_000), policy)
        # 1_000 × 0.10 × 0.5 = 50 -> down to a multiple of 1_000 = 0
        assert rec.limit_minor == 0
        assert rec.security == ()

    @pytest.mark.parametrize(("guarantee", "requested", "limit"), [
        # recommended 10_000_000; ceiling 10_000_000 × 2 = 20_000_000
        (3_000_000, 15_000_000, 13_000_000),   # min(15_000_000, 10_000_000 + 3_000_000, 20_000_000)
        (8_000_000, 15_000_000, 15_000_000),   # min(15_000_000, 18_000_000, 20_000_000): the request
        (50_000_000, 30_000_000, 20_000_000),  # min(30_000_000, 60_000_000, 20_000_000): the ceiling
        (2_550_000, 15_000_000, 12_500_000),   # 12_550_000 down to the step
    ])
    def test_offered_bank_guarantee_covers_the_part_above_the_recommendation(self, guarantee, requested, limit):
        rec = recommend_for_application(application(requested_limit_minor=requested,
                                                    security_offered=offered(bank_guarantee=guarantee)), POLICY)
        assert rec.limit_minor == limit
        assert security(rec) == {"bank_guarantee": limit - 10_000_000}
        assert reason(rec, "security_guarantee").params == {
            "currency": "EUR", "amount_minor": limit - 10_000_000, "recommended_minor": 10_000_000}

    def test_a_guarantee_is_not_asked_for_a_request_within_the_recommendation(self):
        rec = recommend_for_application(application(security_offered=offered(bank_guarantee=5_000_000)), POLICY)
        assert rec.limit_minor == 10_000_000
        assert rec.security == ()

    def test_offered_deposit_does_not_raise_the_limit(self):
        rec = recommend_for_application(application(requested_limit_minor=15_000_000,
                                                    security_offered=offered(deposit=5_000_000)), POLICY)
        assert rec.limit_minor == 10_000_000
        assert rec.security == ()

    # public_sector: 500_000_000 × 0.10 × 1.2 = 60_000_000, above the 50_000_000 insurance threshold
    def test_limit_above_the_insurance_threshold_is_capped_without_insurance(self):
        rec = recommend_for_application(application(sector="public_sector", declared_revenue_minor=500_000_000,
                                                    requested_limit_minor=60_000_000), POLICY)
        assert rec.limit_minor == 50_000_000
        assert rec.security == ()
        assert reason(rec, "insurance_cap").params == {
            "currency": "EUR", "threshold_minor": 50_000_000, "limit_minor": 50_000_000}

    def test_offered_insurance_lets_the_limit_rise_by_its_cover(self):
        rec = recommend_for_application(application(
            sector="public_sector", declared_revenue_minor=500_000_000, requested_limit_minor=60_000_000,
            security_offered=offered(credit_insurance=6_000_000)), POLICY)
        # 50_000_000 threshold + 6_000_000 insured = 56_000_000
        assert rec.limit_minor == 56_000_000
        assert security(rec) == {"credit_insurance": 6_000_000}
        assert {"insurance_cap", "security_insurance"} <= set(codes(rec))

    def test_enough_insurance_grants_the_limit_and_asks_only_for_the_excess(self):
        rec = recommend_for_application(application(
            sector="public_sector", declared_revenue_minor=500_000_000, requested_limit_minor=60_000_000,
            security_offered=offered(credit_insurance=25_000_000)), POLICY)
        # 60_000_000 − 50_000_000 threshold = 10_000_000 to insure
        assert rec.limit_minor == 60_000_000
        assert security(rec) == {"credit_insurance": 10_000_000}
        assert reason(rec, "security_insurance").params == {
            "currency": "EUR", "amount_minor": 10_000_000, "threshold_minor": 50_000_000}
        assert "insurance_cap" not in codes(rec)

    def test_guarantee_and_insurance_together(self):
        rec = recommend_for_application(application(
            declared_revenue_minor=400_000_000, requested_limit_minor=60_000_000,
            security_offered=offered(bank_guarantee=20_000_000, credit_insurance=10_000_000)), POLICY)
        # recommended 400_000_000 × 0.10 = 40_000_000; guarantee lifts to min(60M, 40M + 20M, 80M) = 60_000_000;
        # insurance covers 60_000_000 − 50_000_000 = 10_000_000
        assert rec.limit_minor == 60_000_000
        assert security(rec) == {"bank_guarantee": 20_000_000, "credit_insurance": 10_000_000}

    def test_security_is_listed_deposit_guarantee_insurance(self):
        rec = recommend_for_application(application(
            sector="construction", declared_revenue_minor=1_000_000_000, requested_limit_minor=70_000_000,
            security_offered=offered(bank_guarantee=20_000_000, credit_insurance=20_000_000)), POLICY)
        # 1_000_000_000 × 0.10 × 0.5 = 50_000_000; + 20_000_000 guarantee = 70_000_000 (ceiling 100_000_000);
        # insured part 70_000_000 − 50_000_000 = 20_000_000; deposit 70_000_000 × 0.20 = 14_000_000
        assert rec.limit_minor == 70_000_000
        assert [(s.kind, s.amount_minor) for s in rec.security] == [
            ("deposit", 14_000_000), ("bank_guarantee", 20_000_000), ("credit_insurance", 20_000_000)]


class TestApplicationInput:
    @pytest.mark.parametrize(("field", "value"), [
        ("sector", ""),
        ("sector", "x" * 61),
        ("years_trading", Decimal("-1")),
        ("years_trading", Decimal("200.5")),
        ("declared_revenue_minor", 0),
        ("currency", "eur"),
        ("currency", "EURO"),
        ("currency", "ABC"),
        ("requested_limit_minor", 0),
        ("requested_terms_days", 366),
        ("requested_terms_days", -1),
        ("bureau_score", 101),
        ("bureau_score", -1),
    ])
    def test_invalid_input_names_the_field(self, field, value):
        with pytest.raises(ValidationError, match=field):
            application(**{field: value})

    def test_unknown_field_is_refused(self):
        with pytest.raises(ValidationError, match="collateral"):
            application(collateral="house")


class TestPolicyValidation:
    def test_default_policy_is_valid_and_has_the_shipped_sectors(self):
        assert len(POLICY.sectors) == 12
        assert POLICY.sectors["construction"].risk == "very_high"
        assert POLICY.default_sector_risk.risk == "medium"

    def test_bands_out_of_order(self):
        with pytest.raises(ValidationError, match="years_trading_bands"):
            CreditPolicy(years_trading_bands=[Band(below=Decimal(5), factor=Decimal("0.8")),
                                              Band(below=Decimal(2), factor=Decimal("0.5")),
                                              Band(factor=Decimal(1))])

    def test_band_bounds_must_not_repeat(self):
        with pytest.raises(ValidationError, match="bureau_score_bands"):
            CreditPolicy(bureau_score_bands=[Band(below=Decimal(40), factor=Decimal("0.5")),
                                             Band(below=Decimal(40), factor=Decimal("0.8")),
                                             Band(factor=Decimal(1))])

    def test_open_band_must_be_last(self):
        with pytest.raises(ValidationError, match="bureau_score_bands"):
            CreditPolicy(bureau_score_bands=[Band(factor=Decimal(1)), Band(below=Decimal(40), factor=Decimal("0.5"))])

    def test_bands_need_an_open_last_band(self):
        with pytest.raises(ValidationError, match="years_trading_bands"):
            CreditPolicy(years_trading_bands=[Band(below=Decimal(2), factor=Decimal("0.5"))])

    def test_a_band_never_raises_the_limit(self):
        with pytest.raises(ValidationError, match="factor"):
            Band(factor=Decimal("1.1"))

    @pytest.mark.parametrize(("field", "value"), [
        ("revenue_share", Decimal("-0.1")),
        ("revenue_share", Decimal(0)),
        ("deposit_share", Decimal("-0.2")),
        ("rounding_minor", 0),
        ("guarantee_max_multiple", Decimal("0.5")),
        ("insurance_above_minor", -1),
        ("no_bureau_score_factor", Decimal("1.5")),
        ("max_terms_days", {"low": 60, "medium": 45, "high": 30}),
        ("max_terms_days", {"low": 400, "medium": 45, "high": 30, "very_high": 14}),
        ("grade_factors", {"A": Decimal("1.5")}),
        ("sectors", {"Construction": SectorRisk(risk="high", limit_factor=Decimal(1))}),
        ("deposit_risk_classes", {"extreme"}),
    ])
    def test_invalid_policy_names_the_field(self, field, value):
        with pytest.raises(ValidationError, match=field):
            CreditPolicy(**{field: value})

    def test_unknown_policy_field_is_refused(self):
        with pytest.raises(ValidationError, match="revenue_multiple"):
            CreditPolicy(revenue_multiple=2)

    def test_policy_is_frozen(self):
        with pytest.raises(ValidationError):
            POLICY.revenue_share = Decimal("0.5")

    def test_a_policy_loads_from_json(self):
        policy = CreditPolicy.model_validate_json(POLICY.model_dump_json())
        assert policy == POLICY


class TestRecommendLimit:
    def limit(self, invoiced, months=12, terms=30, grade=None):
        return recommend_limit(invoiced_last_year_minor=invoiced, months_of_history=months, terms_days=terms,
                               grade=grade, policy=POLICY)

    @pytest.mark.parametrize(("grade", "percent", "expected"), [
        (None, None, 20_000_000),  # 120_000_000 / 12 = 10_000_000 a month × (30/30 + 1) = 20_000_000
        ("A", 150, 30_000_000),    # 20_000_000 × 1.5
        ("B", 120, 24_000_000),    # 20_000_000 × 1.2
        ("C", 80, 16_000_000),     # 20_000_000 × 0.8
        ("D", 40, 8_000_000),      # 20_000_000 × 0.4
    ])
    def test_grade_factor(self, grade, percent, expected):
        limit, reasons = self.limit(120_000_000, grade=grade)
        assert limit == expected
        assert reasons[0] == Reason("invoicing_basis", {"months": 12, "terms_days": 30, "multiplier": 2})
        assert reasons[1:] == ((Reason("grade_factor", {"grade": grade, "factor": percent}),) if grade else ())

    def test_no_terms_means_the_default_30_days(self):
        assert self.limit(120_000_000, terms=None)[0] == 20_000_000  # 10_000_000 × (30/30 + 1)

    def test_exact_arithmetic_keeps_a_whole_step(self):
        limit, reasons = self.limit(60_000_000, terms=1, grade="B")
        # 5_000_000 a month × 31/30 × 1.2 = 6_200_000 exactly; with a 28-digit Decimal for 31/30 it is
        # 6_199_999.999… and would floor to 6_100_000
        assert limit == 6_200_000
        assert reasons[0].params["multiplier"] == 1.03  # 31/30, half-up to 2 decimals
        # 10_000_000 a month × 32/30 × 1.2 = 12_800_000 exactly; in floats it is 12_799_999.999…
        assert self.limit(120_000_000, terms=2, grade="B")[0] == 12_800_000

    def test_short_history_averages_over_its_months(self):
        # 30_000_000 / 3 = 10_000_000 a month × (45/30 + 1) = 25_000_000
        assert self.limit(30_000_000, months=3, terms=45)[0] == 25_000_000

    def test_history_beyond_a_year_averages_over_12_months(self):
        assert self.limit(120_000_000, months=24)[0] == 20_000_000  # 120_000_000 / 12 × 2

    def test_a_first_month_counts_as_one(self):
        assert self.limit(5_000_000, months=0)[0] == 10_000_000  # 5_000_000 / 1 × 2

    def test_rounds_down_to_the_step(self):
        # 123_456_789 / 12 = 10_288_065.75 × 2 = 20_576_131.5 -> 20_500_000
        assert self.limit(123_456_789)[0] == 20_500_000

    def test_zero_terms_is_one_month_of_invoicing(self):
        assert self.limit(120_000_000, terms=0)[0] == 10_000_000  # 10_000_000 × (0/30 + 1)

    def test_nothing_invoiced_is_no_limit(self):
        assert self.limit(0, months=0, grade="A") == (0, (Reason("no_history", {}),))
        assert self.limit(0, months=12) == (0, (Reason("no_history", {}),))

    @pytest.mark.parametrize(("kwargs", "field"), [
        ({"invoiced": -1}, "invoiced_last_year_minor"),
        ({"invoiced": 100, "months": -1}, "months_of_history"),
        ({"invoiced": 100, "terms": 366}, "terms_days"),
        ({"invoiced": 100, "grade": "E"}, "grade"),
    ])
    def test_invalid_input_names_the_field(self, kwargs, field):
        with pytest.raises(ValueError, match=field):
            self.limit(**kwargs)


class TestDecide:
    REC = CreditRecommendation(limit_minor=5_000_000, terms_days=14,
                               security=(SecurityRequirement(kind="deposit", amount_minor=1_000_000),),
                               reasons=(), risk_class="very_high")

    def test_approved_as_recommended(self):
        d = decide(self.REC, approve=True, limit_minor=None, terms_days=None, security=None)
        assert (d.decision, d.limit_minor, d.terms_days, d.security) == ("approved", 5_000_000, 14, self.REC.security)

    def test_approved_with_the_same_values_spelled_out(self):
        d = decide(self.REC, approve=True, limit_minor=5_000_000, terms_days=14,
                   security=[SecurityRequirement(kind="deposit", amount_minor=1_000_000)])
        assert d.decision == "approved"

    def test_same_security_in_another_order_is_unchanged(self):
        two = (SecurityRequirement(kind="deposit", amount_minor=1), SecurityRequirement(kind="bank_guarantee",
                                                                                       amount_minor=2))
        rec = CreditRecommendation(100, 30, two, (), "low")
        assert decide(rec, approve=True, limit_minor=None, terms_days=None,
                      security=list(reversed(two))).decision == "approved"

    @pytest.mark.parametrize("change", [
        {"limit_minor": 4_000_000},
        {"terms_days": 30},
        {"security": []},
        {"security": [SecurityRequirement(kind="deposit", amount_minor=500_000)]},
    ])
    def test_any_field_changed(self, change):
        d = decide(self.REC, approve=True, **({"limit_minor": None, "terms_days": None, "security": None} | change))
        assert d.decision == "changed"
        for name, value in change.items():
            assert getattr(d, name) == (tuple(value) if name == "security" else value)

    def test_declined_grants_nothing(self):
        d = decide(self.REC, approve=False, limit_minor=None, terms_days=None, security=None)
        assert (d.decision, d.limit_minor, d.terms_days, d.security) == ("declined", 0, 0, ())
        assert decide(self.REC, approve=False, limit_minor=0, terms_days=None, security=[]).decision == "declined"

    @pytest.mark.parametrize(("approve", "kwargs", "field"), [
        (True, {"limit_minor": 0}, "limit_minor"),
        (True, {"limit_minor": -5}, "limit_minor"),
        (True, {"terms_days": 400}, "terms_days"),
        (True, {"terms_days": -1}, "terms_days"),
        (True, {"security": [{"kind": "deposit", "amount_minor": 1}]}, "security"),
        (False, {"limit_minor": 1_000}, "limit_minor"),
        (False, {"terms_days": 30}, "terms_days"),
        (False, {"security": [SecurityRequirement(kind="deposit", amount_minor=1)]}, "security"),
    ])
    def test_invalid_decision_names_the_field(self, approve, kwargs, field):
        with pytest.raises(ValueError, match=field):
            decide(self.REC, approve=approve, **({"limit_minor": None, "terms_days": None, "security": None} | kwargs))

    def test_approving_a_zero_recommendation_needs_a_limit(self):
        rec = CreditRecommendation(0, 30, (), (), "medium")
        with pytest.raises(ValueError, match="limit_minor"):
            decide(rec, approve=True, limit_minor=None, terms_days=None, security=None)
        assert decide(rec, approve=True, limit_minor=100_000, terms_days=None, security=None).decision == "changed"


class TestHolds:
    def test_headroom(self):
        assert CreditLine("EUR", 1_000, 400, False).headroom_minor == 600
        assert CreditLine("EUR", 1_000, 1_500, True).headroom_minor == -500
        assert CreditLine("EUR", None, 1_500, False).headroom_minor is None

    def test_exposure_at_the_limit_is_no_hold(self):
        assert hold_changes([CreditLine("EUR", 1_000, 1_000, False)]) == []

    def test_exposure_above_the_limit_places_a_hold(self):
        assert hold_changes([CreditLine("EUR", 1_000, 1_001, False)]) == [
            HoldChange("EUR", "place", "limit_exceeded")]

    def test_held_and_still_above_stays_held(self):
        assert hold_changes([CreditLine("EUR", 1_000, 1_001, True)]) == []

    def test_held_and_back_at_the_limit_is_released(self):
        assert hold_changes([CreditLine("EUR", 1_000, 1_000, True)]) == [HoldChange("EUR", "release", "within_limit")]

    def test_no_limit_never_holds(self):
        assert hold_changes([CreditLine("EUR", None, 10**12, False)]) == []

    def test_removed_limit_releases_the_hold(self):
        assert hold_changes([CreditLine("EUR", None, 5_000, True)]) == [HoldChange("EUR", "release", "within_limit")]

    def test_each_currency_on_its_own(self):
        lines = [CreditLine("EUR", 1_000, 2_000, False), CreditLine("TRY", 50_000, 10_000, True),
                 CreditLine("CZK", 100, 50, False)]
        assert hold_changes(lines) == [HoldChange("EUR", "place", "limit_exceeded"),
                                       HoldChange("TRY", "release", "within_limit")]

    def test_roll_up_sums_per_currency_never_across(self):
        members = {"c1": {"EUR": 1_000, "TRY": 50_000}, "c2": {"EUR": 2_500}, "c3": {"TRY": 7, "EUR": -500}}
        assert roll_up(members) == {"EUR": 3_000, "TRY": 50_007}  # 1_000 + 2_500 − 500; 50_000 + 7

    def test_roll_up_of_no_members(self):
        assert roll_up({}) == {}


def every_reason() -> list[Reason]:
    """Reasons as the rules produce them, covering every code."""
    recs = [
        recommend_for_application(application(
            sector="construction", years_trading=Decimal("1.5"), bureau_score=35, requested_limit_minor=10_000_000,
            requested_terms_days=60, security_offered=offered(bank_guarantee=1_000_000)), POLICY),
        recommend_for_application(application(bureau_score=None, requested_limit_minor=2_500_000), POLICY),
        recommend_for_application(application(
            sector="public_sector", declared_revenue_minor=1_000_000_000, requested_limit_minor=120_000_000,
            security_offered=offered(credit_insurance=20_000_000)), POLICY),
    ]
    found = [r for rec in recs for r in rec.reasons]
    found += recommend_limit(invoiced_last_year_minor=123_456_789, months_of_history=7, terms_days=45, grade="B",
                             policy=POLICY)[1]
    found += recommend_limit(invoiced_last_year_minor=0, months_of_history=0, terms_days=None, grade=None,
                             policy=POLICY)[1]
    return found


class TestExplain:
    def test_every_code_is_produced_and_worded(self):
        assert {r.code for r in every_reason()} == REASON_CODES

    @pytest.mark.parametrize("language", LANGUAGES)
    def test_every_reason_renders_completely(self, language):
        for r in every_reason():
            text = explain(r, language)
            assert text and "{" not in text and "}" not in text, (r.code, text)
            assert "_" not in text, (r.code, text)  # no raw key such as very_high or public_sector

    def test_persian_uses_persian_digits(self):
        for r in every_reason():
            text = explain(r, "fa")
            assert not any(c.isascii() and c.isdigit() for c in text), (r.code, text)
            if r.params:
                assert PERSIAN_DIGITS & set(text), (r.code, text)

    def test_english_wording(self):
        def en(code, **params):
            return explain(Reason(code, params), "en")
        assert en("sector_risk", sector="construction", risk="very_high", factor=50) == (
            "Sector construction carries very high credit risk; limit factor 50%")
        assert en("revenue_share", share=10) == "Base limit is 10% of the declared annual revenue"
        assert en("young_company", years=1.5, factor=50) == "Trading for 1.5 years: limit reduced to 50%"
        assert en("terms_capped", max_days=30, requested_days=60, risk="high") == (
            "Terms capped at 30 days for high-risk sectors; 60 were requested")
        assert en("security_deposit", currency="EUR", amount_minor=123_456, share=20, risk="very_high") == (
            "Deposit of €1,234.56 (20% of the limit) required for very high-risk sectors")

    def test_other_languages(self):
        r = Reason("young_company", {"years": 1.5, "factor": 50})
        assert explain(r, "tr") == "1,5 yıldır faaliyette: limit %50 oranına düşürüldü"
        assert explain(r, "cs") == "Doba podnikání 1,5 r.: limit snížen na 50 %"
        assert explain(r, "fa") == "۱٫۵ سال سابقهٔ فعالیت: سقف به ۵۰٪ کاهش یافت"
        sector = Reason("sector_risk", {"sector": "construction", "risk": "very_high", "factor": 50})
        assert explain(sector, "tr") == "İnşaat sektörü çok yüksek kredi riski taşır; limit katsayısı %50"

    def test_money_in_the_languages_format(self):
        r = Reason("security_guarantee", {"currency": "EUR", "amount_minor": 500_000, "recommended_minor": 1_000_000})
        assert "€5,000.00" in explain(r, "en")
        assert "5\xa0000,00\xa0€" in explain(r, "cs")
        assert "€5.000,00" in explain(r, "tr")
        assert "۵٬۰۰۰٫۰۰" in explain(r, "fa")

    def test_a_tenants_own_sector_reads_as_written(self):
        r = Reason("sector_risk", {"sector": "mining", "risk": "high", "factor": 80})
        assert explain(r, "cs") == "Odvětví mining: vysoké úvěrové riziko; koeficient limitu 80 %"

    def test_unknown_language_falls_back_to_english(self):
        r = Reason("revenue_share", {"share": 10})
        assert explain(r, "de") == explain(r, "") == explain(r, "en")
        assert explain(r, "fa-IR") == explain(r, "fa")

    def test_unknown_code_is_an_error(self):
        with pytest.raises(ValueError, match="no_such_reason"):
            explain(Reason("no_such_reason", {}), "en")


SECURITY_OFFERS = st.lists(st.builds(SecurityRequirement,
                                     kind=st.sampled_from(["deposit", "bank_guarantee", "credit_insurance"]),
                                     amount_minor=st.integers(0, 10**11)), max_size=3)


@settings(max_examples=300, deadline=None, database=None)
@given(
    sector=st.sampled_from([*POLICY.sectors, "unknown_sector"]),
    years=st.decimals(min_value=0, max_value=200, places=1),
    revenue=st.integers(1, 10**13),
    requested=st.integers(1, 10**12),
    terms=st.integers(0, 365),
    score=st.none() | st.integers(0, 100),
    security_offered=SECURITY_OFFERS,
    step=st.sampled_from([1, 100, 100_000, 1_000_000]),
)
def test_limit_is_bounded_by_the_request_and_the_offered_security(
        sector, years, revenue, requested, terms, score, security_offered, step):
    policy = CreditPolicy(rounding_minor=step)
    app = CreditApplicationInput(sector=sector, years_trading=years, declared_revenue_minor=revenue, currency="EUR",
                                 requested_limit_minor=requested, requested_terms_days=terms, bureau_score=score,
                                 security_offered=security_offered)
    rec = recommend_for_application(app, policy)
    assert rec.limit_minor <= requested or security_offered
    assert rec.limit_minor >= 0
    assert rec.limit_minor % step == 0
    assert 0 <= rec.terms_days <= terms
    offered_by_kind = {kind: sum(s.amount_minor for s in security_offered if s.kind == kind)
                       for kind in ("bank_guarantee", "credit_insurance")}
    for required in rec.security:  # a guarantee or insurance is only ever asked for as far as it was offered
        if required.kind in offered_by_kind:
            assert required.amount_minor <= offered_by_kind[required.kind]
