"""Invoice file readers: CSV columns to InvoiceRecord dicts, exact decimal amounts, empty cells,
JSON Lines, row numbers. Files only, no database."""
from __future__ import annotations

import json

import pytest

from services.invoicing.entrypoints.file_import import (
    ImportFileError, RecordReader, detect_format, read_records, to_minor_units,
)
from services.invoicing.service_layer.commands import InvoiceRecord


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def rows(path, **kw):
    return list(read_records(path, **kw))


HEADER = "external_id,customer_id,currency,amount,issue_date,due_date\n"


def test_csv_columns_map_to_an_invoice_record_in_any_order(tmp_path):
    path = write(tmp_path, "a.csv",
                 "due_date,amount_minor,external_id,number,customer_id,currency,issue_date,status\n"
                 "2026-02-01,12500,INV-1,N-1,C1,EUR,2026-01-01,open\n")
    [row] = rows(path)
    assert row.row == 2 and row.external_id == "INV-1"
    assert row.record == {"external_id": "INV-1", "number": "N-1", "customer_id": "C1", "currency": "EUR",
                          "amount_minor": "12500", "issue_date": "2026-01-01", "due_date": "2026-02-01",
                          "status": "open"}
    record = InvoiceRecord.model_validate(row.record)
    assert (record.amount_minor, record.customer_key) == (12500, "C1")


def test_customer_master_data_becomes_a_nested_customer(tmp_path):
    path = write(tmp_path, "a.csv",
                 "external_id,customer_id,customer_name,customer_language,customer_timezone,customer_email,"
                 "customer_phone,amount_minor,issue_date,due_date\n"
                 "A,C1,Ege Gıda,tr,Europe/Istanbul,muhasebe@ege.example,,100,2026-01-01,2026-02-01\n"
                 "B,C2,,,,,,100,2026-01-01,2026-02-01\n")
    a, b = rows(path)
    assert a.record["customer"] == {"id": "C1", "name": "Ege Gıda", "language": "tr", "timezone": "Europe/Istanbul",
                                    "email": "muhasebe@ege.example"}
    assert "customer_id" not in a.record
    assert InvoiceRecord.model_validate(a.record).customer.name == "Ege Gıda"
    assert b.record["customer_id"] == "C2" and "customer" not in b.record  # no master data: the id alone


def test_empty_cells_are_not_given(tmp_path):
    path = write(tmp_path, "a.csv", "external_id,number,customer_id,currency,amount_minor,issue_date,due_date,status\n"
                                    "A, ,C1,,100,2026-01-01,2026-02-01,\n")
    [row] = rows(path)
    assert row.record == {"external_id": "A", "customer_id": "C1", "amount_minor": "100",
                          "issue_date": "2026-01-01", "due_date": "2026-02-01"}


@pytest.mark.parametrize(("amount", "currency", "minor"), [
    ("1234.56", "EUR", 123456),
    ("1234.5", "EUR", 123450),
    ("1234", "EUR", 123400),
    ("0.01", "EUR", 1),
    (".5", "EUR", 50),
    ("1234.50", "EUR", 123450),
    ("1000", "JPY", 1000),
    ("1000.00", "JPY", 1000),  # trailing zeros are exact
    ("1.234", "KWD", 1234),
    ("12.3", "KWD", 12300),
    ("0.001", "KWD", 1),
    ("99999999999.99", "EUR", 9999999999999),
    ("0.1", "USD", 10),  # binary floating point would not be exact; Decimal is
    ("1234.56", "HUF", 123456),  # ISO 4217 minor units, not CLDR display digits (HUF 0, IQD 0)
    ("1234.56", "IDR", 123456),
    ("1.234", "IQD", 1234),
])
def test_decimal_amounts_convert_exactly_with_the_currency_exponent(amount, currency, minor):
    assert to_minor_units(amount, currency) == minor


@pytest.mark.parametrize(("amount", "currency", "reason"), [
    ("12.345", "EUR", "more decimals than EUR allows (2 decimal places)"),
    ("10.5", "JPY", "more decimals than JPY allows (no decimal places)"),
    ("1.2345", "KWD", "more decimals than KWD allows (3 decimal places)"),
    ("1,234.56", "EUR", "not a decimal number"),
    ("1234,56", "EUR", "not a decimal number"),
    ("1e3", "EUR", "not a decimal number"),
    ("abc", "EUR", "not a decimal number"),
    ("-5.00", "EUR", "not a decimal number"),
    ("NaN", "EUR", "not a decimal number"),
    ("0.00", "EUR", "must be greater than 0"),
    ("10000000000000", "EUR", "too large"),
])
def test_amounts_that_are_not_exact_are_refused(amount, currency, reason):
    with pytest.raises(ValueError, match=reason.replace("(", r"\(").replace(")", r"\)")):
        to_minor_units(amount, currency)


def test_rows_with_bad_amounts_are_rejected_naming_the_field(tmp_path):
    path = write(tmp_path, "a.csv", HEADER
                 + "A,C1,JPY,1500,2026-01-01,2026-02-01\n"
                 + "B,C1,JPY,1500.5,2026-01-01,2026-02-01\n"
                 + "C,C1,KWD,2.125,2026-01-01,2026-02-01\n"
                 + "D,C1,KWD,2.1255,2026-01-01,2026-02-01\n"
                 + "E,C1,EUR,twelve,2026-01-01,2026-02-01\n"
                 + "F,C1,XYZ,12.00,2026-01-01,2026-02-01\n"
                 + "G,C1,,12.00,2026-01-01,2026-02-01\n")
    a, b, c, d, e, f, g = rows(path)
    assert a.record["amount_minor"] == 1500 and c.record["amount_minor"] == 2125
    assert (b.row, b.external_id, b.field, b.record) == (3, "B", "amount", None)
    assert "JPY" in b.reason
    assert (d.field, e.field) == ("amount", "amount")
    assert "not a decimal number" in e.reason
    assert (f.field, f.reason) == ("currency", "unknown ISO 4217 currency code 'XYZ'")
    assert g.field == "currency" and "required" in g.reason  # no currency and no default to convert with


def test_the_billing_sources_default_currency_converts_amounts(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + "A,C1,,12.5,2026-01-01,2026-02-01\nB,C1,JPY,12,2026-01-01,2026-02-01\n")
    a, b = rows(path, default_currency="KWD")
    assert a.record["amount_minor"] == 12500 and "currency" not in a.record  # the ingestor fills in the default
    assert b.record["amount_minor"] == 12


def test_a_huf_row_with_two_decimals_is_imported_not_rejected(tmp_path):
    path = write(tmp_path, "a.csv", HEADER + "A,C1,HUF,1234.56,2026-01-01,2026-02-01\n"
                                             "B,C1,HUF,1234.567,2026-01-01,2026-02-01\n")
    a, b = rows(path)
    assert (a.field, a.record["amount_minor"]) == (None, 123456)
    assert (b.field, b.reason) == ("amount", "'1234.567' has more decimals than HUF allows (2 decimal places)")


def test_amount_and_amount_minor_together_are_ambiguous(tmp_path):
    path = write(tmp_path, "a.csv", "external_id,customer_id,currency,amount,amount_minor,issue_date,due_date\n"
                                    "A,C1,EUR,1.00,100,2026-01-01,2026-02-01\n"
                                    "B,C1,EUR,,100,2026-01-01,2026-02-01\n")
    a, b = rows(path)
    assert a.field == "amount" and "not both" in a.reason
    assert b.record["amount_minor"] == "100"


def test_csv_row_numbers_count_the_header_as_row_one(tmp_path):
    path = write(tmp_path, "a.csv", HEADER
                 + "A,C1,EUR,1,2026-01-01,2026-02-01\n"
                 + "\n"  # a blank line keeps its number but yields nothing
                 + ",,,,,\n"
                 + '"B",C1,EUR,1,2026-01-01,2026-02-01\n'
                 + "C,C1,EUR,1,2026-01-01,2026-02-01,surplus\n")
    a, b, c = rows(path)
    assert (a.row, b.row, c.row) == (2, 5, 6)
    assert (c.field, c.external_id) == ("row", "C") and "7 cells" in c.reason


def test_a_byte_order_mark_and_crlf_line_ends_are_fine(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes(("\ufeff" + HEADER + "A,C1,EUR,1.5,2026-01-01,2026-02-01\n").replace("\n", "\r\n").encode())
    [row] = rows(path)
    assert row.record["external_id"] == "A" and row.record["amount_minor"] == 150


@pytest.mark.parametrize(("header", "message"), [
    ("external_id,customer_id,amount,issue_date,due_date,colour", "unknown column 'colour'"),
    ("external_id,customer_id,issue_date,due_date", "lacks amount or amount_minor"),
    ("external_id,amount,issue_date,due_date", "lacks customer_id"),
    ("external_id,customer_id,amount,amount,issue_date,due_date", "'amount' appears twice"),
])
def test_a_bad_header_stops_the_file(tmp_path, header, message):
    path = write(tmp_path, "a.csv", header + "\n")
    with pytest.raises(ImportFileError, match=message):
        rows(path)


def test_jsonl_lines_are_records_and_bad_lines_are_rejected(tmp_path):
    good = {"external_id": "A", "customer_id": "C1", "amount_minor": 100, "issue_date": "2026-01-01",
            "due_date": "2026-02-01"}
    path = write(tmp_path, "a.jsonl", "\n".join([
        json.dumps(good),
        '{"external_id": "B", "amount_minor": ',
        "",
        "[1, 2]",
        json.dumps(good | {"external_id": "C", "customer": {"id": "C1", "name": "Ege"}}),
    ]) + "\n")
    a, b, d, c = rows(path)
    assert (a.row, a.record, a.external_id) == (1, good, "A")
    assert (b.row, b.field, b.record) == (2, "line", None) and b.reason.startswith("not valid JSON")
    assert (d.row, d.field) == (4, "line") and "JSON object" in d.reason
    assert (c.row, c.record["customer"]["name"]) == (5, "Ege")


def test_jsonl_invalid_utf8_is_a_rejected_line(tmp_path):
    path = tmp_path / "a.ndjson"
    path.write_bytes(b'{"external_id": "\xff"}\n{"external_id": "B"}\n')
    a, b = rows(path)
    assert (a.row, a.field) == (1, "line") and b.external_id == "B"


def test_the_format_comes_from_the_extension_or_is_given(tmp_path):
    from pathlib import Path

    assert detect_format(Path("x.CSV")) == "csv"
    assert detect_format(Path("x.jsonl")) == detect_format(Path("x.ndjson")) == "jsonl"
    assert detect_format(Path("x.txt"), "jsonl") == "jsonl"
    with pytest.raises(ImportFileError, match="--format"):
        detect_format(Path("x.txt"))
    with pytest.raises(ImportFileError, match="unknown format 'xml'"):
        detect_format(Path("x.csv"), "xml")
    with pytest.raises(ImportFileError, match="no such file"):
        RecordReader(tmp_path / "missing.csv")
    path = write(tmp_path, "data.txt", HEADER + "A,C1,EUR,1,2026-01-01,2026-02-01\n")
    assert rows(path, fmt="csv")[0].record["amount_minor"] == 100


def test_reading_is_lazy_and_reports_bytes(tmp_path):
    path = tmp_path / "big.csv"
    with open(path, "w") as f:
        f.write(HEADER)
        for i in range(50_000):
            f.write(f"INV-{i},C{i % 100},EUR,{i + 1}.25,2026-01-01,2026-02-01\n")
    reader = RecordReader(path)
    it = iter(reader)
    first = next(it)
    assert first.record["external_id"] == "INV-0"
    assert 0 < reader.bytes_read < reader.total_bytes / 4  # read a buffer, not the file
    assert sum(1 for _ in it) == 49_999
    assert reader.bytes_read == reader.total_bytes


# -- payments -----------------------------------------------------------------------------------

from datetime import datetime, timedelta, timezone  # noqa: E402

from services.invoicing.entrypoints.file_import import (  # noqa: E402
    PaymentReader, detect_payment_format, parse_received_at, read_payments, reference_tokens,
)
from services.invoicing.service_layer.commands import RecordPayment  # noqa: E402

NOON = timedelta(hours=12)


def payment_rows(path, fmt=None):
    return list(read_payments(path, fmt))


def test_payment_csv_columns_map_to_a_record_payment(tmp_path):
    path = write(tmp_path, "p.csv",
                 "reason,status,invoice_refs,received_at,amount,currency,customer_id,external_id\n"
                 ",,INV-1;INV-2  N-3,2026-03-05,1234.56,EUR,C1,P-1\n"
                 "bounced: NSF,reversed,,2026-03-06T10:30:00+03:00,1234.56,EUR,C1,P-1\n"
                 ",,,,,KWD,C2,P-2\n")
    a, b, c = payment_rows(path)
    assert (a.row, a.external_id) == (2, "P-1")
    assert a.record == {"external_id": "P-1", "customer_id": "C1", "currency": "EUR", "amount_minor": 123456,
                        "invoice_refs": ["INV-1", "INV-2", "N-3"],
                        "received_at": datetime(2026, 3, 5, 12, tzinfo=timezone.utc)}
    cmd = RecordPayment.model_validate(a.record)
    assert (cmd.amount_minor, cmd.invoice_refs, cmd.status) == (123456, ["INV-1", "INV-2", "N-3"], "received")
    reversal = RecordPayment.model_validate(b.record)
    assert (reversal.status, reversal.reason) == ("reversed", "bounced: NSF")
    assert reversal.received_at == datetime(2026, 3, 6, 7, 30, tzinfo=timezone.utc)
    assert c.record == {"external_id": "P-2", "customer_id": "C2", "currency": "KWD"}  # no amount: the model says so


def test_payment_csv_with_amount_minor_and_bad_rows(tmp_path):
    path = write(tmp_path, "p.csv",
                 "external_id,customer_id,currency,amount,amount_minor,received_at\n"
                 "A,C1,JPY,,1500,\n"
                 "B,C1,XYZ,10.00,,\n"
                 "C,C1,EUR,10.001,,\n"
                 "D,C1,EUR,10,1000,\n"
                 "E,C1,EUR,10,,2026-02-30\n"
                 "F,C1,EUR,10,,2026-03-05T10:00:00\n"
                 "G,C1,EUR,10,,yesterday\n"
                 "H,C1,,10,,\n")
    a, b, c, d, e, f, g, h = payment_rows(path)
    assert a.record["amount_minor"] == "1500" and RecordPayment.model_validate(a.record).amount_minor == 1500
    assert (b.field, b.reason) == ("currency", "unknown ISO 4217 currency code 'XYZ'")
    assert c.field == "amount" and "more decimals than EUR allows" in c.reason
    assert d.field == "amount" and "not both" in d.reason
    assert (e.row, e.external_id, e.field) == (6, "E", "received_at") and "not a valid date" in e.reason
    assert f.field == "received_at" and "no UTC offset" in f.reason
    assert g.field == "received_at" and "ISO 8601" in g.reason
    assert h.field == "currency" and "required" in h.reason


def test_a_bare_date_is_noon_utc_so_it_stays_on_its_day_everywhere():
    received = parse_received_at("2026-03-05")
    assert received == datetime(2026, 3, 5, tzinfo=timezone.utc) + NOON
    for zone in ("America/Los_Angeles", "Europe/Istanbul", "Asia/Tokyo", "Pacific/Honolulu"):
        from zoneinfo import ZoneInfo

        assert received.astimezone(ZoneInfo(zone)).date().isoformat() == "2026-03-05", zone
    assert parse_received_at("2026-03-05T23:30:00Z") == datetime(2026, 3, 5, 23, 30, tzinfo=timezone.utc)


def test_payment_header_problems_stop_the_file(tmp_path):
    for header, message in (("external_id,customer_id,currency,amount,colour", "unknown column 'colour'"),
                            ("external_id,customer_id,currency", "lacks amount or amount_minor"),
                            ("external_id,customer_id,amount", "lacks currency"),
                            ("date,amount,currency,reference", "lacks transaction_id")):
        path = write(tmp_path, "p.csv", header + "\n")
        with pytest.raises(ImportFileError, match=message):
            payment_rows(path, "bank" if header.startswith("date") else None)


def test_payment_jsonl_lines_are_record_payment_bodies(tmp_path):
    good = {"external_id": "P-1", "customer_id": "C1", "currency": "EUR", "amount_minor": 100,
            "received_at": "2026-03-05T10:00:00Z", "invoice_refs": ["INV-1"]}
    path = write(tmp_path, "p.ndjson", json.dumps(good) + "\n\n{nope\n")
    a, b = payment_rows(path)
    assert (a.row, a.record, a.external_id) == (1, good, "P-1")
    assert RecordPayment.model_validate(a.record).invoice_refs == ["INV-1"]
    assert (b.row, b.field, b.record) == (3, "line", None)


BANK = (
    "date,amount,currency,reference,counterparty_id,transaction_id\n"
    '2026-03-05,1500.00,EUR,"INV-1001 and INV-1002 / ACME",C1,TX-1\n'
    "2026-03-05,-49.90,EUR,card fee,,TX-2\n"
    "2026-03-06,+250,TRY,Fatura 2026/0042.,,TX-3\n"
    "2026-03-06,0.00,EUR,,,TX-4\n"
    "2026-03-07,12.345,EUR,INV-1,,TX-5\n"
    "2026-03-07,10.00,EUR,INV-1,,\n"
    "2026-03-07,1.234.00,EUR,INV-1,,TX-6\n"
    "07.03.2026,10.00,EUR,INV-1,,TX-7\n"
    "2026-03-08,-oops,EUR,,,TX-8\n"
    "2026-03-08,-1.999,XYZ,,,\n"
)


def test_bank_credits_become_payments_and_debits_are_skipped(tmp_path):
    path = write(tmp_path, "statement.csv", BANK)
    rows_ = payment_rows(path, "bank")
    by_row = {r.row: r for r in rows_}
    assert sorted(by_row) == list(range(2, 12))

    tx1 = by_row[2]
    assert tx1.record == {"external_id": "TX-1", "currency": "EUR", "amount_minor": 150000,
                          "received_at": datetime(2026, 3, 5, 12, tzinfo=timezone.utc), "customer_id": "C1"}
    assert tx1.reference_tokens == ("INV-1001", "and", "INV-1002", "ACME")
    assert "invoice_refs" not in tx1.record  # found against the database at import time

    tx3 = by_row[4]
    assert "customer_id" not in tx3.record and tx3.record["amount_minor"] == 25000  # no counterparty
    assert tx3.reference_tokens == ("Fatura", "2026/0042", "2026/0042.")

    assert (by_row[3].skipped, by_row[3].record, by_row[3].field) == ("a debit", None, None)
    assert by_row[5].skipped == "a zero amount"
    assert by_row[11].skipped == "a debit"  # a debit is skipped whatever else is wrong with it

    assert by_row[6].field == "amount" and "more decimals than EUR allows" in by_row[6].reason
    assert (by_row[7].field, by_row[7].external_id) == ("transaction_id", None)
    assert by_row[8].field == "amount" and "not a decimal number" in by_row[8].reason
    assert by_row[9].field == "date" and "ISO 8601" in by_row[9].reason
    assert by_row[10].field == "amount" and not by_row[10].skipped


def test_bank_columns_in_any_order_and_without_the_optional_ones(tmp_path):
    path = write(tmp_path, "s.txt", "transaction_id,currency,amount,date\nTX-9,JPY,1500,2026-03-05\n")
    [row] = payment_rows(path, "bank")
    assert row.record == {"external_id": "TX-9", "currency": "JPY", "amount_minor": 1500,
                          "received_at": datetime(2026, 3, 5, 12, tzinfo=timezone.utc)}
    assert row.reference_tokens == ()


def test_bank_exports_may_carry_columns_the_import_does_not_use(tmp_path):
    path = write(tmp_path, "s.csv", "booking_text,transaction_id,currency,amount,date,balance\n"
                                    "SEPA credit,TX-1,EUR,10.00,2026-03-05,1000.00\n")
    [row] = payment_rows(path, "bank")
    assert row.record["external_id"] == "TX-1" and row.record["amount_minor"] == 1000


@pytest.mark.parametrize(("text", "tokens"), [
    ("INV-1001 and INV-1002 / ACME", ["INV-1001", "and", "INV-1002", "ACME"]),
    ("INV-1001,INV-1002;INV-1003", ["INV-1001", "INV-1002", "INV-1003"]),
    ("Payment for (INV-7). Thanks!", ["Payment", "for", "INV-7", "Thanks", "Thanks!"]),
    ("#1001 #1001 #1001", ["1001", "#1001"]),
    ('Ref: "A/2026/5"', ["Ref", "Ref:", "A/2026/5"]),
    ("", []),
    (None, []),
    (" - / . ", []),
])
def test_reference_tokens(text, tokens):
    assert reference_tokens(text) == tokens


def test_reference_tokens_are_bounded():
    assert len(reference_tokens(" ".join(f"T{i}" for i in range(5000)))) == 1000
    assert reference_tokens("x" * 201 + " INV-1") == ["INV-1"]


def test_payment_formats(tmp_path):
    from pathlib import Path

    assert detect_payment_format(Path("x.csv")) == "csv"
    assert detect_payment_format(Path("x.ndjson")) == "jsonl"
    assert detect_payment_format(Path("x.csv"), "BANK") == "bank"
    with pytest.raises(ImportFileError, match="csv\\|jsonl\\|bank"):
        detect_payment_format(Path("statement.txt"))
    with pytest.raises(ImportFileError, match="unknown format 'mt940'"):
        detect_payment_format(Path("x.csv"), "mt940")
    with pytest.raises(ImportFileError, match="no such file"):
        PaymentReader(tmp_path / "missing.csv", "bank")
