"""shared/: money, log redaction, clocks, settings, API key format. No database, broker or network."""
from __future__ import annotations

import json
import logging
import os
import re
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st
from pydantic import TypeAdapter, ValidationError

from shared.auth import new_key
from shared.clock import FileClock, ManualClock, SystemClock, clock_from
from shared.contract.money import (
    CurrencyCode,
    currency_exponent,
    format_money,
    known_currencies,
    to_major,
    validate_currency,
)
from shared.logging import configure_logging, get_logger, mask_email, mask_phone, redact
from shared.settings import ServiceSettings, load_settings

UTC = timezone.utc

# --------------------------------------------------------------------------- money


class TestMoney:
    @pytest.mark.parametrize(("code", "exponent"), [("JPY", 0), ("EUR", 2), ("TRY", 2), ("USD", 2), ("KWD", 3),
                                                    ("BHD", 3), ("CZK", 2)])
    def test_exponents(self, code, exponent):
        assert currency_exponent(code) == exponent

    @pytest.mark.parametrize(("minor", "code", "major"), [(123456, "EUR", Decimal("1234.56")),
                                                          (500, "JPY", Decimal("500")),
                                                          (123456, "KWD", Decimal("123.456")),
                                                          (1, "EUR", Decimal("0.01")),
                                                          (-250, "EUR", Decimal("-2.50"))])
    def test_to_major(self, minor, code, major):
        assert to_major(minor, code) == major

    @pytest.mark.parametrize("code", ["EUR", "TRY", "JPY", "KWD", "IRR", "CZK", "USD"])
    def test_known_currency_accepted(self, code):
        assert validate_currency(code) == code
        assert TypeAdapter(CurrencyCode).validate_python(code) == code

    @pytest.mark.parametrize("code", ["XYZ", "eur", "", "EURO", "XAU", "XXX", "XTS"])
    def test_unknown_or_non_tender_currency_rejected(self, code):
        with pytest.raises(ValueError):
            validate_currency(code)
        with pytest.raises(ValidationError):
            TypeAdapter(CurrencyCode).validate_python(code)
        assert code not in known_currencies()

    @pytest.mark.parametrize(
        ("minor", "code", "locale", "text"),
        [
            (123456, "EUR", "en", "€1,234.56"),
            (123456, "USD", "en", "$1,234.56"),
            (123456, "TRY", "tr", "₺1.234,56"),
            (123456, "CZK", "cs", "1\xa0234,56\xa0Kč"),
            (123456, "JPY", "en", "¥123,456"),
            (0, "EUR", "en", "€0.00"),
        ],
    )
    def test_format_money(self, minor, code, locale, text):
        assert format_money(minor, code, locale) == text

    def test_format_money_three_decimals(self):
        assert "123.456" in format_money(123456, "KWD", "en")
        assert "123,456" in format_money(123456, "KWD", "tr")

    def test_format_money_defaults_to_english(self):
        assert format_money(100, "EUR") == "€1.00"

    @given(st.integers(-10**12, 10**12), st.sampled_from(["EUR", "JPY", "KWD", "TRY"]))
    def test_to_major_round_trips(self, minor, code):
        major = to_major(minor, code)
        assert major.scaleb(currency_exponent(code)) == minor
        assert -major.as_tuple().exponent == currency_exponent(code) or minor == 0


# --------------------------------------------------------------------------- redaction

class TestRedact:
    def test_email_keeps_first_char_and_domain(self):
        assert redact("ayse.yilmaz@example.com.tr") == "a***@example.com.tr"
        assert mask_email("write to john+ar@corp.example.com today") == "write to j***@corp.example.com today"

    def test_several_emails_in_one_string(self):
        assert redact("a.b@x.io, zed@y.org") == "a***@x.io, z***@y.org"

    @pytest.mark.parametrize(("phone", "masked"), [
        ("+905321234567", "***67"),
        ("+90 532 123 45 67", "***67"),
        ("+1 (212) 555-0100", "***00"),
        ("+420-601-123-456", "***56"),
    ])
    def test_e164_phone_keeps_last_two_digits(self, phone, masked):
        assert redact(f"sms to {phone} sent") == f"sms to {masked} sent"
        assert mask_phone(phone) == masked

    @pytest.mark.parametrize("text", [
        "2026-11-23T10:00:00+03:00",
        "2026-11-23T07:00:00.123456+00:00",
        "2026-11-23 10:00:00+0300",
        "INV-2026-11-23",
        "invoice INV-2026-11-23 due 2026-11-23",
        "amount 1234567 minor units",
        "case 4f8c2a9e-1b7d-4c55-9f00-123456789abc",
    ])
    def test_timestamps_and_invoice_numbers_untouched(self, text):
        assert redact(text) == text

    @pytest.mark.parametrize("key", ["password", "secret", "api_key", "token", "Authorization", "X-API-Key",
                                     "PASSWORD", "Token"])
    def test_secret_keys_masked_in_dicts(self, key):
        assert redact({key: "hunter2", "user": "u1"}) == {key: "***", "user": "u1"}

    def test_nested_structures(self):
        value = {
            "customer": {"email": "ayse@example.com", "phone": "+905321234567", "credentials": {"token": "t0k"}},
            "recipients": ["bob@example.org", "+420601123456"],
            "pair": ("carol@example.net", 5),
            "count": 3,
            "ok": None,
        }
        assert redact(value) == {
            "customer": {"email": "a***@example.com", "phone": "***67", "credentials": {"token": "***"}},
            "recipients": ["b***@example.org", "***56"],
            "pair": ("c***@example.net", 5),
            "count": 3,
            "ok": None,
        }

    def test_non_strings_pass_through(self):
        for v in (42, 1.5, None, True, Decimal("1.00")):
            assert redact(v) == v

    @given(st.from_regex(r"[a-z][a-z0-9._]{2,15}@[a-z]{2,10}\.(com|org|tr|cz)", fullmatch=True))
    def test_no_full_email_survives(self, email):
        out = redact(f"contact {email} now")
        assert email not in out
        assert f"{email[0]}***@{email.split('@')[1]}" in out

    @given(st.from_regex(r"\+[1-9][0-9]{7,13}", fullmatch=True))
    def test_no_full_phone_survives(self, phone):
        out = redact(f"call {phone}")
        assert phone not in out
        assert out == f"call ***{phone[-2:]}"


@pytest.fixture
def structlog_capture(capsys):
    """configure_logging() with stderr captured; structlog and the root logger restored after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield capsys
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()
    root.handlers[:] = handlers
    root.setLevel(level)


def _lines(err: str) -> list[dict]:
    return [json.loads(line) for line in err.splitlines() if line.strip()]


def test_logger_never_writes_full_email_or_phone(structlog_capture):
    configure_logging("invoicing", level="info", fmt="json")
    log = get_logger("test")
    log.info("reminder sent to ayse.yilmaz@example.com", email="ayse.yilmaz@example.com",
             phone="+905321234567", invoice="INV-2026-11-23", customer={"api_key": "k-123", "email": "b@x.org"})
    err = structlog_capture.readouterr().err
    assert "ayse.yilmaz@example.com" not in err
    assert "+905321234567" not in err
    assert "k-123" not in err
    (line,) = _lines(err)
    assert line["event"] == "reminder sent to a***@example.com"
    assert line["email"] == "a***@example.com"
    assert line["phone"] == "***67"
    assert line["invoice"] == "INV-2026-11-23"
    assert line["customer"] == {"api_key": "***", "email": "b***@x.org"}
    assert line["service"] == "invoicing"
    assert line["level"] == "info"
    # the ISO timestamp is left alone
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", line["timestamp"])


def test_logger_level_filters_debug(structlog_capture):
    configure_logging("risk", level="warning", fmt="json")
    log = get_logger("test")
    log.info("hidden")
    log.warning("shown")
    assert [line["event"] for line in _lines(structlog_capture.readouterr().err)] == ["shown"]


def test_console_format_also_redacts(structlog_capture):
    configure_logging("notifier", level="info", fmt="console")
    get_logger("test").info("mail", to="ayse.yilmaz@example.com")
    err = structlog_capture.readouterr().err
    assert "ayse.yilmaz@example.com" not in err
    assert "a***@example.com" in err


def test_logger_masks_secret_keyword_arguments(structlog_capture):
    configure_logging("invoicing", level="info", fmt="json")
    get_logger("test").info("login", password="hunter2", token="tok-secret-1", api_key="k-123")
    err = structlog_capture.readouterr().err
    assert "hunter2" not in err
    assert "tok-secret-1" not in err
    assert "k-123" not in err


# --------------------------------------------------------------------------- clocks

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
SLACK = timedelta(seconds=5)


def close_to(actual: datetime, expected: datetime) -> bool:
    return expected - timedelta(seconds=1) <= actual <= expected + SLACK


class TestManualClock:
    def test_time_moves_only_when_told(self):
        clock = ManualClock(T0)
        assert clock.now() == T0
        assert clock.now() == T0
        clock.advance(timedelta(days=3, hours=2))
        assert clock.now() == datetime(2030, 1, 4, 14, 0, tzinfo=UTC)
        clock.set(datetime(2026, 3, 20, tzinfo=UTC))
        assert clock.now() == datetime(2026, 3, 20, tzinfo=UTC)


class TestFileClock:
    def test_missing_file_is_system_time(self, tmp_path):
        clock = FileClock(tmp_path / "clock.json")
        before = datetime.now(UTC)
        now = clock.now()
        after = datetime.now(UTC)
        assert before <= now <= after
        assert now.tzinfo is not None

    def test_set_is_seen_by_another_instance(self, tmp_path):
        path = tmp_path / "clock.json"
        writer, reader = FileClock(path), FileClock(path)
        reader.now()  # reader has looked before the file existed
        writer.set(T0)
        assert close_to(reader.now(), T0)
        assert close_to(writer.now(), T0)

    def test_advance_moves_both_instances(self, tmp_path):
        path = tmp_path / "clock.json"
        a, b = FileClock(path), FileClock(path)
        a.set(T0)
        b.advance(timedelta(days=10))
        assert close_to(a.now(), T0 + timedelta(days=10))
        assert close_to(b.now(), T0 + timedelta(days=10))

    def test_file_holds_offset_and_keeps_running(self, tmp_path):
        path = tmp_path / "clock.json"
        FileClock(path).set(datetime.now(UTC) + timedelta(hours=1))
        offset = json.loads(path.read_text())["offset_seconds"]
        assert 3590 < offset <= 3600
        assert not (tmp_path / "clock.tmp").exists(), "temporary file replaced atomically"

    def test_removing_the_file_returns_to_system_time(self, tmp_path):
        path = tmp_path / "clock.json"
        clock = FileClock(path)
        clock.set(T0)
        assert close_to(clock.now(), T0)
        path.unlink()
        assert abs(clock.now() - datetime.now(UTC)) < SLACK

    def test_half_written_file_keeps_last_value(self, tmp_path):
        path = tmp_path / "clock.json"
        clock = FileClock(path)
        clock.set(T0)
        assert close_to(clock.now(), T0)
        path.write_text('{"offset_se')
        assert close_to(clock.now(), T0)

    def test_empty_file_means_no_offset(self, tmp_path):
        path = tmp_path / "clock.json"
        path.write_text("")
        assert abs(FileClock(path).now() - datetime.now(UTC)) < SLACK

    def test_second_set_within_same_mtime_tick_is_seen(self, tmp_path):
        path = tmp_path / "clock.json"
        a, b = FileClock(path), FileClock(path)
        a.set(T0)
        assert close_to(b.now(), T0)
        first = os.stat(path)
        a.set(T0 + timedelta(days=1))
        # simulate a coarse timestamp: the second write lands in the same mtime tick
        os.utime(path, ns=(first.st_atime_ns, first.st_mtime_ns))
        assert close_to(b.now(), T0 + timedelta(days=1))

    def test_clock_from(self, tmp_path):
        assert isinstance(clock_from(None), SystemClock)
        assert isinstance(clock_from(""), SystemClock)
        assert isinstance(clock_from(tmp_path / "c.json"), FileClock)
        assert isinstance(clock_from(str(tmp_path / "c.json")), FileClock)


# --------------------------------------------------------------------------- settings


class DemoSettings(ServiceSettings):
    service_name: str = "demo"


@pytest.fixture
def clean_env(monkeypatch):
    for name in list(os.environ):
        if name.lower() in ServiceSettings.model_fields:
            monkeypatch.delenv(name)
    return monkeypatch


class TestSettings:
    def test_missing_database_url_exits_naming_it(self, clean_env):
        clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
        with pytest.raises(SystemExit) as exc:
            load_settings(DemoSettings)
        message = str(exc.value.code)
        assert message.startswith("DemoSettings: invalid configuration")
        assert "DATABASE_URL" in message
        assert "set the environment variable DATABASE_URL" in message
        assert "KAFKA_BOOTSTRAP_SERVERS" not in message

    def test_every_missing_variable_named(self, clean_env):
        with pytest.raises(SystemExit) as exc:
            load_settings(DemoSettings)
        message = str(exc.value.code)
        assert "DATABASE_URL" in message and "KAFKA_BOOTSTRAP_SERVERS" in message

    def test_service_name_required_on_base_class(self, clean_env):
        clean_env.setenv("DATABASE_URL", "postgresql://u@h/db")
        clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
        with pytest.raises(SystemExit) as exc:
            load_settings(ServiceSettings)
        assert "SERVICE_NAME" in str(exc.value.code)

    def test_database_url_must_be_postgres(self, clean_env):
        clean_env.setenv("DATABASE_URL", "mysql://u@h/db")
        clean_env.setenv("KAFKA_BOOTSTRAP_SERVERS", "localhost:9092")
        with pytest.raises(SystemExit) as exc:
            load_settings(DemoSettings)
        assert "DATABASE_URL" in str(exc.value.code)

    def test_loads_from_env_with_defaults(self, clean_env):
        clean_env.setenv("DATABASE_URL", "postgresql://u:p@localhost:5432/demo")
        clean_env.setenv("kafka_bootstrap_servers", "localhost:9092")  # case-insensitive
        clean_env.setenv("HTTP_PORT", "8042")
        s = load_settings(DemoSettings)
        assert s.service_name == "demo"
        assert s.database_url == "postgresql://u:p@localhost:5432/demo"
        assert s.kafka_bootstrap_servers == "localhost:9092"
        assert s.http_port == 8042
        assert s.roles == "all"
        assert s.clock_file is None

    def test_overrides_win(self, clean_env):
        s = load_settings(DemoSettings, database_url="postgres://x/y", kafka_bootstrap_servers="b:1", roles="api")
        assert s.database_url == "postgres://x/y" and s.roles == "api"

    @pytest.mark.parametrize(
        ("roles", "role", "expected"),
        [("all", "api", True), ("all", "relay", True), ("api", "api", True), ("api", "worker", False),
         ("api, worker", "worker", True), ("api,worker", "relay", False), (" relay ", "relay", True),
         ("api,all", "worker", True)],
    )
    def test_has_role(self, clean_env, roles, role, expected):
        s = DemoSettings(database_url="postgresql://x/y", kafka_bootstrap_servers="b:1", roles=roles)
        assert s.has_role(role) is expected


# --------------------------------------------------------------------------- API keys


class TestNewKey:
    def test_format(self):
        key_id, secret, token = new_key()
        assert token == f"thk_{key_id}_{secret}"
        assert re.fullmatch(r"[0-9a-f]{12}", key_id)
        assert re.fullmatch(r"[A-Za-z0-9_-]{32}", secret)

    def test_token_splits_back_into_id_and_secret(self):
        # authenticate() splits on the first two underscores; the secret may itself contain "_"
        for _ in range(200):
            key_id, secret, token = new_key()
            prefix, parsed_id, parsed_secret = token.split("_", 2)
            assert (prefix, parsed_id, parsed_secret) == ("thk", key_id, secret)

    def test_unique(self):
        keys = [new_key() for _ in range(1000)]
        assert len({k[0] for k in keys}) == 1000
        assert len({k[1] for k in keys}) == 1000
        assert len({k[2] for k in keys}) == 1000


def test_redact_hides_passwords_in_connection_strings_and_secret_like_keys():
    from shared.logging import redact

    out = redact({"url": "postgresql://app:s3cr3t@localhost:5432/x", "db_password": "p", "access_token": "t"})
    assert out == {"url": "postgresql://app:***@localhost:5432/x", "db_password": "***", "access_token": "***"}
