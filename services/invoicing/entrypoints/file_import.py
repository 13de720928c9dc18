"""Invoice files in: CSV and JSON Lines, streamed in bounded memory.

The readers turn a file into one `Row` per record, lazily: the file is never read as a whole,
so a million-row file costs what one chunk of rows costs. Each row carries its row number
(CSV: the header is row 1, data rows count from 2; JSON Lines: lines count from 1) and either
an InvoiceRecord-shaped dict or the field and reason it cannot become one.

`import_invoices` feeds the rows in chunks to the same InvoiceIngestor the HTTP API uses (so a
file decides exactly like the API: idempotent per (billing source, external_id), adjustments,
cancellations), writes the rejected rows to a rejects CSV (row, external_id, field, reason),
and returns the counts. The events go to the outbox in the ingestion transactions; the outbox
relay of the running invoicing service publishes them.

Payment files (CSV, JSON Lines, bank statements) are read the same way and recorded one by one,
in file order, by `import_payments`: see the payments section below."""
from __future__ import annotations

import asyncio
import contextlib
import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg
from pydantic import ValidationError

from services.invoicing.adapters import repository as repo
from services.invoicing.domain.model import reserved_source
from services.invoicing.service_layer.commands import RecordPayment
from services.invoicing.service_layer.handlers import Invoicing
from services.invoicing.service_layer.ingest import InvoiceIngestor, validation_problem
from services.invoicing.service_layer.sources import Right, missing_right
from shared.clock import Clock
from shared.contract import Topics
from shared.contract.money import currency_exponent, known_currencies
from shared.contract.text import spreadsheet_cell
from shared.http import DomainError

FORMATS = ("csv", "jsonl")
_EXTENSIONS = {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl"}

CUSTOMER_COLUMNS = {
    "customer_name": "name", "customer_language": "language", "customer_timezone": "timezone",
    "customer_email": "email", "customer_phone": "phone",
}
PLAIN_COLUMNS = ("external_id", "number", "customer_id", "currency", "amount_minor", "issue_date", "due_date", "status")
CSV_COLUMNS = frozenset((*PLAIN_COLUMNS, *CUSTOMER_COLUMNS, "amount"))
REQUIRED_COLUMNS = ("external_id", "customer_id", "issue_date", "due_date")
MAX_AMOUNT_MINOR = 10**15  # InvoiceRecord.amount_minor: lt=10**15

REJECTS_HEADER = ("row", "external_id", "field", "reason")
STATUSES = ("created", "unchanged", "adjusted", "cancelled", "rejected")


class ImportFileError(Exception):
    """The file as a whole cannot be imported (missing, unknown format, bad header): one line."""


async def _rights(pool: asyncpg.Pool, tenant_id: str, source: str, right: Right) -> asyncpg.Record:
    rights = await repo.source_rights(pool, tenant_id, source)
    if (problem := missing_right(rights, source, right)) is not None:
        raise ImportFileError(f"source: {problem}")
    return rights


def _refuse_reserved(source: str) -> None:
    if reserved_source(source):
        raise ImportFileError(f"source: {source!r} is reserved for the platform's own records")


@dataclass(frozen=True)
class Row:
    row: int
    record: dict[str, Any] | None = None
    external_id: str | None = None
    field: str | None = None  # set when the row cannot become a record
    reason: str | None = None


# -- format -------------------------------------------------------------------------------------

def detect_format(path: Path, fmt: str | None = None, formats: tuple[str, ...] = FORMATS) -> str:
    """The format asked for (one of `formats`), else the one the file extension names."""
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in formats:
            raise ImportFileError(f"unknown format {fmt!r}: use one of {', '.join(formats)}")
        return fmt
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise ImportFileError(
            f"cannot tell the format of {path.name!r} from its extension: name it .csv, .jsonl or .ndjson,"
            f" or pass --format {'|'.join(formats)}"
        ) from None


class _FileReader:
    """A file read once, front to back; `bytes_read` says how far it has got (for progress)."""

    def __init__(self, path: Path | str, fmt: str) -> None:
        self.path = Path(path)
        self.format = fmt
        if not self.path.is_file():
            raise ImportFileError(f"{'not a file' if self.path.exists() else 'no such file'}: {self.path}")
        self.total_bytes = self.path.stat().st_size
        self._raw: BinaryIO | None = None

    @property
    def bytes_read(self) -> int:
        if self._raw is None or self._raw.closed:
            return self.total_bytes if self._raw is not None else 0
        return self._raw.tell()


class RecordReader(_FileReader):
    """Iterates the invoice rows of one CSV or JSON Lines file."""

    def __init__(self, path: Path | str, fmt: str | None = None, *, default_currency: str | None = None) -> None:
        super().__init__(path, detect_format(Path(path), fmt))
        self.default_currency = default_currency

    def __iter__(self) -> Iterator[Row]:
        with open(self.path, "rb") as raw:
            self._raw = raw
            if self.format == "csv":
                yield from _csv_rows(raw, self.path, self.default_currency)
            else:
                yield from _jsonl_rows(raw)


def read_records(path: Path | str, fmt: str | None = None, *, default_currency: str | None = None) -> Iterator[Row]:
    """The rows of a CSV or JSON Lines file, one at a time."""
    return iter(RecordReader(path, fmt, default_currency=default_currency))


# -- JSON Lines ---------------------------------------------------------------------------------

def _jsonl_rows(raw: BinaryIO) -> Iterator[Row]:
    for number, line in enumerate(raw, start=1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except UnicodeDecodeError as exc:
            yield Row(number, field="line", reason=f"not UTF-8 text: {exc.reason} at byte {exc.start}")
            continue
        except json.JSONDecodeError as exc:
            yield Row(number, field="line", reason=f"not valid JSON: {exc.msg} (column {exc.colno})")
            continue
        if not isinstance(value, dict):
            yield Row(number, field="line", reason=f"expected a JSON object, got {type(value).__name__}")
            continue
        external_id = value.get("external_id")
        yield Row(number, record=value, external_id=external_id if isinstance(external_id, str) else None)


# -- CSV ----------------------------------------------------------------------------------------

def _csv_rows(raw: BinaryIO, path: Path, default_currency: str | None) -> Iterator[Row]:
    for number, columns, cells in _csv_table(raw, path, CSV_COLUMNS, REQUIRED_COLUMNS, amount_minor_allowed=True):
        yield csv_row(number, columns, cells, len(columns), default_currency)


def _check_header(columns: list[str], path: Path, known: frozenset[str] = CSV_COLUMNS,
                  required: tuple[str, ...] = REQUIRED_COLUMNS, *, amount_minor_allowed: bool = True,
                  ignore_unknown: bool = False) -> list[str]:
    """The header's columns, or one clear error: unknown (unless ignored), repeated or missing."""
    unknown = [c for c in columns if c not in known]
    if unknown and not ignore_unknown:
        raise ImportFileError(
            f"{path.name}: unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in the"
            f" header; the columns are {', '.join(sorted(known))}"
        )
    seen: set[str] = set()
    for c in columns:
        if c in seen and c in known:
            raise ImportFileError(f"{path.name}: column {c!r} appears twice in the header")
        seen.add(c)
    missing = [c for c in required if c not in seen]
    if amount_minor_allowed:
        if "amount" not in seen and "amount_minor" not in seen:
            missing.append("amount or amount_minor")
    elif "amount" not in seen:
        missing.append("amount")
    if missing:
        raise ImportFileError(f"{path.name}: the header lacks {', '.join(missing)}")
    return columns


def csv_row(number: int, columns: list[str], cells: list[str], width: int | None = None,
            default_currency: str | None = None) -> Row:
    """One CSV data row as an InvoiceRecord-shaped dict; empty cells mean "not given"."""
    width = len(columns) if width is None else width
    values = {c: v.strip() for c, v in zip(columns, cells)}
    external_id = values.get("external_id") or None
    if len(cells) > width and any(v.strip() for v in cells[width:]):
        return Row(number, external_id=external_id, field="row",
                   reason=f"{len(cells)} cells, but the header has {width} columns")
    record: dict[str, Any] = {c: values[c] for c in PLAIN_COLUMNS if values.get(c)}
    customer = {key: values[c] for c, key in CUSTOMER_COLUMNS.items() if values.get(c)}
    if customer:
        if "customer_id" in record:
            customer = {"id": record.pop("customer_id"), **customer}
        record["customer"] = customer
    problem = convert_amount(values, record, default_currency,
                             "required to convert amount to minor units (the billing source has no default currency)")
    if problem:
        return Row(number, external_id=external_id, field=problem[0], reason=problem[1])
    return Row(number, record=record, external_id=external_id)


def convert_amount(values: dict[str, str], record: dict[str, Any], default_currency: str | None,
                   no_currency: str) -> tuple[str, str] | None:
    """Turn the decimal `amount` cell into record["amount_minor"]; or (field, reason) why not."""
    amount = values.get("amount")
    if not amount:
        return None
    if "amount_minor" in record:
        return "amount", "give amount or amount_minor, not both"
    currency = record.get("currency") or default_currency
    if currency is None:
        return "currency", no_currency
    if currency not in known_currencies():
        return "currency", f"unknown ISO 4217 currency code {currency!r}"
    try:
        record["amount_minor"] = to_minor_units(amount, currency)
    except ValueError as exc:
        return "amount", str(exc)
    return None


_DECIMAL = re.compile(r"[0-9]+(\.[0-9]+)?|\.[0-9]+")


def to_minor_units(amount: str, currency: str) -> int:
    """"1234.56" EUR -> 123456, exactly; more decimals than the currency has (other than
    trailing zeros) is an error, never rounded."""
    text = amount.strip()
    if not _DECIMAL.fullmatch(text):
        raise ValueError(f"{amount!r} is not a decimal number like 1234.56 (digits and one '.' only)")
    exponent = currency_exponent(currency)
    try:
        minor = Decimal(text).scaleb(exponent)
    except InvalidOperation:  # pragma: no cover - the pattern admits only plain decimals
        raise ValueError(f"{amount!r} is not a decimal number") from None
    if minor != minor.to_integral_value():
        places = "no decimal places" if exponent == 0 else f"{exponent} decimal place{'s' if exponent > 1 else ''}"
        raise ValueError(f"{amount!r} has more decimals than {currency} allows ({places})")
    value = int(minor)
    if value <= 0:
        raise ValueError("must be greater than 0")
    if value >= MAX_AMOUNT_MINOR:
        raise ValueError(f"{amount!r} is too large")
    return value


# -- the import ---------------------------------------------------------------------------------

@dataclass
class ImportSummary:
    rows: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    seconds: float = 0.0
    bytes: int = 0
    rejects_path: Path | None = None  # set when at least one row was rejected

    @property
    def rejected(self) -> int:
        return self.counts["rejected"]

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


Progress = Callable[[int, int, int], None]  # (rows done, bytes read, total bytes)


class _Rejects:
    """The rejects CSV, created on the first rejected row."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: io.TextIOWrapper | None = None
        self._writer: Any = None

    def write(self, row: int, external_id: str | None, field_name: str | None, reason: str | None) -> None:
        if self._writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "w", newline="", encoding="utf-8")
            self._writer = csv.writer(self._file)
            self._writer.writerow(REJECTS_HEADER)
        # The cells echo the file's own text, which a spreadsheet must not run as a formula.
        self._writer.writerow([spreadsheet_cell(c) for c in (row, external_id or "", field_name or "", reason or "")])

    @property
    def written(self) -> bool:
        return self._writer is not None

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


async def import_invoices(
    pool: asyncpg.Pool,
    clock: Clock,
    topics: Topics,
    *,
    tenant_id: str,
    source: str,
    path: Path | str,
    rejects_path: Path | str,
    chunk: int = 5000,
    progress: Progress | None = None,
    fmt: str | None = None,
    grace_days: int = 0,
) -> ImportSummary:
    """Import an invoice file `chunk` rows at a time. An existing rejects file is replaced;
    it is only written when a row is rejected. Chunks already imported stay imported when a
    later one fails: importing the same file again is safe (unchanged rows stay unchanged)."""
    started = time.perf_counter()
    path, rejects_path = Path(path), Path(rejects_path)
    _refuse_reserved(source)
    default_currency = (await _rights(pool, tenant_id, source, "invoices"))["default_currency"]
    reader = RecordReader(path, fmt, default_currency=default_currency)
    if rejects_path.resolve() == path.resolve():
        raise ImportFileError("the rejects file must not be the file being imported")
    rejects_path.unlink(missing_ok=True)
    ingestor = InvoiceIngestor(pool, clock, topics, grace_days)
    summary = ImportSummary()
    rejects = _Rejects(rejects_path)
    # One chunk is written while the next one is read: at most two chunks in memory, and chunks
    # are applied in file order (a flush starts only when the one before it has finished).
    writing: asyncio.Task | None = None
    try:
        batch: list[Row] = []
        for row in reader:
            batch.append(row)
            if len(batch) % 512 == 0:
                await asyncio.sleep(0)  # let the chunk being written make progress
            if len(batch) >= chunk:
                if writing is not None:
                    await writing
                writing = asyncio.create_task(_flush(ingestor, tenant_id, source, batch, summary, rejects))
                batch = []
                if progress is not None:
                    progress(summary.rows, reader.bytes_read, reader.total_bytes)
        if writing is not None:
            await writing
        if batch:
            await _flush(ingestor, tenant_id, source, batch, summary, rejects)
    finally:
        if writing is not None and not writing.done():
            writing.cancel()
            with contextlib.suppress(BaseException):
                await writing
        rejects.close()
    summary.bytes = reader.total_bytes
    if progress is not None:
        progress(summary.rows, reader.total_bytes, reader.total_bytes)
    summary.seconds = time.perf_counter() - started
    summary.rejects_path = rejects_path if rejects.written else None
    return summary


async def _flush(ingestor: InvoiceIngestor, tenant_id: str, source: str, batch: list[Row],
                 summary: ImportSummary, rejects: _Rejects) -> None:
    """Ingest one chunk; its rejected rows go to the rejects file in row order."""
    valid = [r for r in batch if r.record is not None]
    results = await ingestor.ingest(tenant_id, source, [r.record for r in valid]) if valid else []
    rejected: list[tuple[int, str | None, str | None, str | None]] = [
        (r.row, r.external_id, r.field, r.reason) for r in batch if r.record is None
    ]
    counts = summary.counts
    for result in results:
        counts[result.status] += 1
        if result.status == "rejected":
            row = valid[result.index]
            rejected.append((row.row, row.external_id, result.field, result.reason))
    counts["rejected"] += len(batch) - len(valid)
    for line in sorted(rejected, key=lambda r: r[0]):
        rejects.write(*line)
    summary.rows += len(batch)


# == payments ===================================================================================
#
# Payment files come in three shapes, read just as lazily as invoice files:
#   csv    one payment per row (the columns of RecordPayment, `amount` as an exact decimal);
#   jsonl  one POST /v1/payments body per line;
#   bank   a bank statement export: date, amount, currency, reference, counterparty_id,
#          transaction_id. Credits become payments (transaction_id is their external_id), debits
#          are skipped; the customer and the invoices paid are worked out from the counterparty
#          and the invoice numbers found in the free-text reference.
# `import_payments` records them one by one, in file order, through the same
# Invoicing.record_payment the HTTP API uses (matching, credit, unapplied cash, reversals).

PAYMENT_FORMATS = ("csv", "jsonl", "bank")
PAYMENT_CSV_COLUMNS = frozenset((
    "external_id", "customer_id", "currency", "amount_minor", "amount", "received_at", "invoice_refs", "status",
    "reason",
))
PAYMENT_REQUIRED_COLUMNS = ("external_id", "customer_id", "currency")
BANK_COLUMNS = frozenset(("date", "amount", "currency", "reference", "counterparty_id", "transaction_id"))
BANK_REQUIRED_COLUMNS = ("date", "amount", "currency", "transaction_id")
PAYMENT_STATUSES = ("created", "unchanged", "reversed", "rejected", "skipped")
# The customer a bank credit is recorded for when neither the counterparty nor the reference says
# whose it is. No such customer exists, so record_payment keeps the money as unapplied cash
# ("unknown customer") for a person to resolve: a credit on the statement is never dropped.
UNIDENTIFIED_CUSTOMER = "UNIDENTIFIED"
MAX_REFERENCE_TOKENS = 1000  # RecordPayment.invoice_refs: max_length=1000
# A rejected bank row names the statement's column, not the RecordPayment field it became.
BANK_FIELDS = {"external_id": "transaction_id", "customer_id": "counterparty_id", "received_at": "date",
               "amount_minor": "amount", "invoice_refs": "reference"}


@dataclass(frozen=True)
class PaymentRow:
    row: int
    record: dict[str, Any] | None = None  # RecordPayment-shaped; a bank row lacks invoice_refs (and,
    #                                      without a counterparty, customer_id) until identify_payer
    external_id: str | None = None
    field: str | None = None  # set when the row cannot become a payment
    reason: str | None = None
    skipped: str | None = None  # set when the row is not a payment at all (a debit on a bank statement)
    reference_tokens: tuple[str, ...] = ()  # bank: candidate invoice references from the reference text


def detect_payment_format(path: Path, fmt: str | None = None) -> str:
    return detect_format(path, fmt, PAYMENT_FORMATS)


class PaymentReader(_FileReader):
    """Iterates the rows of one payment file; a bank statement is read only with fmt="bank"."""

    def __init__(self, path: Path | str, fmt: str | None = None) -> None:
        super().__init__(path, detect_payment_format(Path(path), fmt))

    def __iter__(self) -> Iterator[PaymentRow]:
        with open(self.path, "rb") as raw:
            self._raw = raw
            if self.format == "jsonl":
                for r in _jsonl_rows(raw):
                    yield PaymentRow(r.row, record=r.record, external_id=r.external_id, field=r.field, reason=r.reason)
            elif self.format == "csv":
                for number, columns, cells in _csv_table(raw, self.path, PAYMENT_CSV_COLUMNS,
                                                         PAYMENT_REQUIRED_COLUMNS, amount_minor_allowed=True):
                    yield payment_csv_row(number, columns, cells)
            else:
                # Bank exports carry more (balance, booking text, ...): columns not used are ignored.
                for number, columns, cells in _csv_table(raw, self.path, BANK_COLUMNS, BANK_REQUIRED_COLUMNS,
                                                         amount_minor_allowed=False, ignore_unknown=True):
                    yield bank_row(number, columns, cells)


def read_payments(path: Path | str, fmt: str | None = None) -> Iterator[PaymentRow]:
    """The rows of a payment CSV, JSON Lines or bank statement file, one at a time."""
    return iter(PaymentReader(path, fmt))


def _csv_table(raw: BinaryIO, path: Path, known: frozenset[str], required: tuple[str, ...], *,
               amount_minor_allowed: bool, ignore_unknown: bool = False) -> Iterator[tuple[int, list[str], list[str]]]:
    """(row number, header columns, cells) of each non-blank data row; the header is row 1."""
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path.name}: not UTF-8 text ({exc.reason} in the header)") from None
    columns = _check_header([h.strip() for h in header], path, known, required,
                            amount_minor_allowed=amount_minor_allowed, ignore_unknown=ignore_unknown)
    number = 1
    while True:
        try:
            cells = next(reader)
        except StopIteration:
            break
        except UnicodeDecodeError as exc:
            raise ImportFileError(f"{path.name}: not UTF-8 text ({exc.reason}) after row {number}") from None
        except csv.Error as exc:
            raise ImportFileError(f"{path.name}: unreadable CSV after row {number}: {exc}") from None
        number += 1
        if not any(c.strip() for c in cells):  # a blank line, or one of empty cells only
            continue
        yield number, columns, cells


_BARE_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


def parse_received_at(text: str) -> datetime:
    """An ISO 8601 date or date-time with a UTC offset. A bare date (what bank statements and
    most exports give) means 12:00 UTC that day, not 00:00: noon UTC is the same calendar day
    from UTC-11 to UTC+11, so the payment does not slip to the day before when it is shown or
    compared in a customer's timezone west of Greenwich. The ledger books it on that date."""
    text = text.strip()
    if _BARE_DATE.fullmatch(text):
        try:
            day = date.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{text!r} is not a valid date") from None
        return datetime(day.year, day.month, day.day, 12, tzinfo=timezone.utc)
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is not an ISO 8601 date (2026-03-05) or date-time"
                         " (2026-03-05T10:30:00+03:00)") from None
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no UTC offset: add one (Z, +03:00) or give a bare date")
    return value


def _surplus(number: int, cells: list[str], width: int, external_id: str | None) -> PaymentRow | None:
    if len(cells) > width and any(v.strip() for v in cells[width:]):
        return PaymentRow(number, external_id=external_id, field="row",
                          reason=f"{len(cells)} cells, but the header has {width} columns")
    return None


def payment_csv_row(number: int, columns: list[str], cells: list[str]) -> PaymentRow:
    """One payment CSV data row as a RecordPayment-shaped dict; empty cells mean "not given".
    invoice_refs holds invoice numbers or external ids separated by ';' or spaces."""
    values = {c: v.strip() for c, v in zip(columns, cells)}
    external_id = values.get("external_id") or None
    if (bad := _surplus(number, cells, len(columns), external_id)) is not None:
        return bad
    record: dict[str, Any] = {c: values[c] for c in ("external_id", "customer_id", "currency", "amount_minor",
                                                     "status", "reason") if values.get(c)}
    if values.get("invoice_refs"):
        record["invoice_refs"] = [r for r in re.split(r"[;\s]+", values["invoice_refs"]) if r]
    if values.get("received_at"):
        try:
            record["received_at"] = parse_received_at(values["received_at"])
        except ValueError as exc:
            return PaymentRow(number, external_id=external_id, field="received_at", reason=str(exc))
    problem = convert_amount(values, record, None, "required (also to convert amount to minor units)")
    if problem:
        return PaymentRow(number, external_id=external_id, field=problem[0], reason=problem[1])
    return PaymentRow(number, record=record, external_id=external_id)


_REFERENCE_SEPARATORS = re.compile(r"[\s,;|()\[\]{}<>\"'`]+")
_REFERENCE_TRIM = ".:/\\-_#*+!?=&"


def reference_tokens(text: str | None) -> list[str]:
    """The words of a bank reference that could be invoice numbers or external ids, in order and
    without repeats: split at spaces and , ; | brackets and quotes, with punctuation around a word
    trimmed ("INV-1001." -> "INV-1001"; the word as written is kept too). Only tokens equal to an
    open invoice's number or external id become invoice references (identify_payer)."""
    tokens: dict[str, None] = {}
    for word in _REFERENCE_SEPARATORS.split(text or ""):
        trimmed = word.strip(_REFERENCE_TRIM)
        if not trimmed:
            continue
        for token in (trimmed, word):
            if len(token) <= 200:
                tokens.setdefault(token, None)
    return list(tokens)[:MAX_REFERENCE_TOKENS]


_SIGNED_DECIMAL = re.compile(r"([+-]?)\s*(.*)", re.DOTALL)


def bank_row(number: int, columns: list[str], cells: list[str]) -> PaymentRow:
    """One bank statement row. A credit becomes a payment (without invoice_refs, and without
    customer_id unless the bank names the counterparty); a debit or a zero amount is skipped."""
    values = {c: v.strip() for c, v in zip(columns, cells)}
    external_id = values.get("transaction_id") or None
    if (bad := _surplus(number, cells, len(columns), external_id)) is not None:
        return bad
    amount = values.get("amount", "")
    sign, digits = _SIGNED_DECIMAL.fullmatch(amount).groups()  # type: ignore[union-attr]
    if not amount:
        return PaymentRow(number, external_id=external_id, field="amount", reason="required")
    if not _DECIMAL.fullmatch(digits):
        return PaymentRow(number, external_id=external_id, field="amount",
                          reason=f"{amount!r} is not a decimal number like 1234.56 or -1234.56"
                                 " (digits, one '.' and a sign only)")
    if sign == "-" or Decimal(digits) == 0:
        return PaymentRow(number, external_id=external_id, skipped="a debit" if sign == "-" else "a zero amount")
    if external_id is None:
        return PaymentRow(number, field="transaction_id", reason="required: it identifies the payment")
    currency = values.get("currency")
    if not currency:
        return PaymentRow(number, external_id=external_id, field="currency", reason="required")
    if currency not in known_currencies():
        return PaymentRow(number, external_id=external_id, field="currency",
                          reason=f"unknown ISO 4217 currency code {currency!r}")
    try:
        amount_minor = to_minor_units(digits, currency)
    except ValueError as exc:
        return PaymentRow(number, external_id=external_id, field="amount", reason=str(exc))
    if not values.get("date"):
        return PaymentRow(number, external_id=external_id, field="date", reason="required")
    try:
        received_at = parse_received_at(values["date"])
    except ValueError as exc:
        return PaymentRow(number, external_id=external_id, field="date", reason=str(exc))
    record: dict[str, Any] = {"external_id": external_id, "currency": currency, "amount_minor": amount_minor,
                              "received_at": received_at}
    if values.get("counterparty_id"):
        record["customer_id"] = values["counterparty_id"]
    return PaymentRow(number, record=record, external_id=external_id,
                      reference_tokens=tuple(reference_tokens(values.get("reference"))))


async def identify_payer(db: asyncpg.Pool | asyncpg.Connection, tenant_id: str, source: str,
                         row: PaymentRow) -> tuple[str, list[str]]:
    """(customer id, invoice references) of a bank credit, as of now (earlier rows of the file
    already applied). The references are the reference tokens equal to the number or external id
    of an open invoice: of the counterparty when the bank names it, else of the whole tenant, and
    then the customer is the one whose invoices they are, if exactly one. Otherwise the payment
    goes to UNIDENTIFIED_CUSTOMER as unapplied cash. A transaction recorded before without a
    counterparty keeps the customer it was recorded for, so importing a statement again is
    "unchanged" even after its invoices were paid."""
    assert row.record is not None
    customer = row.record.get("customer_id")
    if customer is None:
        recorded = await db.fetchval(
            "SELECT customer_id FROM payments WHERE tenant_id = $1 AND billing_source = $2 AND external_id = $3",
            tenant_id, source, row.record["external_id"],
        )
        if recorded is not None:
            return recorded, []
    tokens = list(row.reference_tokens)
    if not tokens:
        return customer or UNIDENTIFIED_CUSTOMER, []
    matches = await db.fetch(
        "SELECT customer_id, number, external_id FROM invoices WHERE tenant_id = $1 AND status = 'open'"
        " AND (number = ANY($2::text[]) OR external_id = ANY($2::text[]))"
        " AND ($3::text IS NULL OR customer_id = $3)",
        tenant_id, tokens, customer,
    )
    wanted = set(tokens)
    owners: dict[str, set[str]] = {}
    for m in matches:
        for key in (m["number"], m["external_id"]):
            if key in wanted:
                owners.setdefault(key, set()).add(m["customer_id"])
    refs = [t for t in tokens if t in owners]
    if customer is None:
        customers = set().union(*owners.values()) if owners else set()
        customer = customers.pop() if len(customers) == 1 else UNIDENTIFIED_CUSTOMER
    return customer, refs


@dataclass
class PaymentImportSummary(ImportSummary):
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(PAYMENT_STATUSES, 0))
    unidentified: int = 0  # bank credits recorded for UNIDENTIFIED_CUSTOMER (unapplied cash)

    @property
    def skipped(self) -> int:
        return self.counts["skipped"]


async def import_payments(
    pool: asyncpg.Pool,
    clock: Clock,
    topics: Topics,
    *,
    tenant_id: str,
    source: str,
    path: Path | str,
    rejects_path: Path | str,
    fmt: str | None = None,
    progress: Progress | None = None,
    progress_every: int = 200,
) -> PaymentImportSummary:
    """Record the payments of a file one at a time, in file order (each in its own transaction,
    so a payment sees what the ones before it paid). Rejected rows go to the rejects file (row,
    external_id, field, reason), replaced on each run and only written when a row is rejected.
    Payments recorded stay recorded if a later row fails; importing the same file again is safe:
    what was recorded is "unchanged", a reversal already applied too."""
    started = time.perf_counter()
    path, rejects_path = Path(path), Path(rejects_path)
    _refuse_reserved(source)
    reader = PaymentReader(path, fmt)
    if rejects_path.resolve() == path.resolve():
        raise ImportFileError("the rejects file must not be the file being imported")
    await _rights(pool, tenant_id, source, "payments")
    rejects_path.unlink(missing_ok=True)
    invoicing = Invoicing(pool, clock, topics)
    bank = reader.format == "bank"
    summary = PaymentImportSummary()
    counts = summary.counts
    rejects = _Rejects(rejects_path)
    try:
        for row in reader:
            summary.rows += 1
            if row.skipped:
                counts["skipped"] += 1
            elif row.record is None:
                counts["rejected"] += 1
                rejects.write(row.row, row.external_id, row.field, row.reason)
            else:
                status, customer, problem = await _record_payment(invoicing, pool, tenant_id, source, row, bank)
                if problem is not None:
                    counts["rejected"] += 1
                    field_name, reason = problem
                    rejects.write(row.row, row.external_id, BANK_FIELDS.get(field_name, field_name) if bank
                                  else field_name, reason)
                else:
                    counts[status] += 1
                    if status == "created" and bank and customer == UNIDENTIFIED_CUSTOMER:
                        summary.unidentified += 1
            if progress is not None and summary.rows % progress_every == 0:
                progress(summary.rows, reader.bytes_read, reader.total_bytes)
    finally:
        rejects.close()
    summary.bytes = reader.total_bytes
    if progress is not None:
        progress(summary.rows, reader.total_bytes, reader.total_bytes)
    summary.seconds = time.perf_counter() - started
    summary.rejects_path = rejects_path if rejects.written else None
    return summary


async def _record_payment(invoicing: Invoicing, pool: asyncpg.Pool, tenant_id: str, source: str, row: PaymentRow,
                          bank: bool) -> tuple[str | None, str | None, tuple[str, str] | None]:
    """(status, customer id, None) of one recorded payment, or (None, None, (field, reason))."""
    assert row.record is not None
    record = row.record
    try:
        if bank:
            customer, refs = await identify_payer(pool, tenant_id, source, row)
            record = {**record, "customer_id": customer, "invoice_refs": refs}
        cmd = RecordPayment.model_validate(record)
        if cmd.billing_source and cmd.billing_source != source:
            raise DomainError("billing_source", f"this file is imported for billing source {source!r}")
        outcome, _ = await invoicing.record_payment(tenant_id, source, cmd)
    except ValidationError as exc:
        return None, None, validation_problem(exc)
    except DomainError as exc:
        return None, None, (exc.field, exc.reason)
    return outcome.status, cmd.customer_id, None
