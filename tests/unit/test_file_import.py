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
