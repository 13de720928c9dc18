"""Invoice files in: CSV and JSON Lines, streamed in bounded memory.

The readers turn a file into one `Row` per record, lazily: the file is never read as a whole,
so a million-row file costs what one chunk of rows costs. Each row carries its row number
(CSV: the header is row 1, data rows count from 2; JSON Lines: lines count from 1) and either
an InvoiceRecord-shaped dict or the field and reason it cannot become one.

`import_invoices` feeds the rows in chunks to the same InvoiceIngestor the HTTP API uses (so a
file decides exactly like the API: idempotent per (billing source, external_id), adjustments,
cancellations), writes the rejected rows to a rejects CSV (row, external_id, field, reason),
and returns the counts. The events go to the outbox in the ingestion transactions; the outbox
relay of the running invoicing service publishes them."""
from __future__ import annotations

import csv
import io
import json
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

import asyncpg

from services.invoicing.service_layer.ingest import InvoiceIngestor
from shared.clock import Clock
from shared.contract import Topics
from shared.contract.money import currency_exponent, known_currencies

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


@dataclass(frozen=True)
class Row:
    row: int
    record: dict[str, Any] | None = None
    external_id: str | None = None
    field: str | None = None  # set when the row cannot become a record
    reason: str | None = None


# -- format -------------------------------------------------------------------------------------

def detect_format(path: Path, fmt: str | None = None) -> str:
    if fmt is not None:
        fmt = fmt.lower()
        if fmt not in FORMATS:
            raise ImportFileError(f"unknown format {fmt!r}: use one of {', '.join(FORMATS)}")
        return fmt
    try:
        return _EXTENSIONS[path.suffix.lower()]
    except KeyError:
        raise ImportFileError(
            f"cannot tell the format of {path.name!r} from its extension: name it .csv, .jsonl or .ndjson,"
            " or pass --format csv|jsonl"
        ) from None


class RecordReader:
    """Iterates the rows of one file; `bytes_read` says how far into the file it has got."""

    def __init__(self, path: Path | str, fmt: str | None = None, *, default_currency: str | None = None) -> None:
        self.path = Path(path)
        self.format = detect_format(self.path, fmt)
        if not self.path.is_file():
            raise ImportFileError(f"{'not a file' if self.path.exists() else 'no such file'}: {self.path}")
        self.total_bytes = self.path.stat().st_size
        self.default_currency = default_currency
        self._raw: BinaryIO | None = None

    @property
    def bytes_read(self) -> int:
        if self._raw is None or self._raw.closed:
            return self.total_bytes if self._raw is not None else 0
        return self._raw.tell()

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
    text = io.TextIOWrapper(raw, encoding="utf-8-sig", newline="")
    reader = csv.reader(text)
    try:
        header = next(reader)
    except StopIteration:
        return
    except UnicodeDecodeError as exc:
        raise ImportFileError(f"{path.name}: not UTF-8 text ({exc.reason} in the header)") from None
    columns = _check_header([h.strip() for h in header], path)
    width = len(columns)
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
        yield csv_row(number, columns, cells, width, default_currency)


def _check_header(columns: list[str], path: Path) -> list[str]:
    unknown = [c for c in columns if c not in CSV_COLUMNS]
    if unknown:
        raise ImportFileError(
            f"{path.name}: unknown column{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))} in the"
            f" header; the columns are {', '.join(sorted(CSV_COLUMNS))}"
        )
    seen: set[str] = set()
    for c in columns:
        if c in seen:
            raise ImportFileError(f"{path.name}: column {c!r} appears twice in the header")
        seen.add(c)
    missing = [c for c in REQUIRED_COLUMNS if c not in seen]
    if "amount" not in seen and "amount_minor" not in seen:
        missing.append("amount or amount_minor")
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
    amount = values.get("amount")
    if amount:
        if "amount_minor" in record:
            return Row(number, external_id=external_id, field="amount",
                       reason="give amount or amount_minor, not both")
        currency = record.get("currency") or default_currency
        if currency is None:
            return Row(number, external_id=external_id, field="currency",
                       reason="required to convert amount to minor units (the billing source has no default currency)")
        if currency not in known_currencies():
            return Row(number, external_id=external_id, field="currency",
                       reason=f"unknown ISO 4217 currency code {currency!r}")
        try:
            record["amount_minor"] = to_minor_units(amount, currency)
        except ValueError as exc:
            return Row(number, external_id=external_id, field="amount", reason=str(exc))
    return Row(number, record=record, external_id=external_id)


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
    source_registered: bool = True

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
        self._writer.writerow((row, external_id or "", field_name or "", reason or ""))

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
    default_currency = await pool.fetchval(
        "SELECT default_currency FROM billing_sources WHERE tenant_id = $1 AND name = $2", tenant_id, source
    )
    reader = RecordReader(path, fmt, default_currency=default_currency)
    if rejects_path.resolve() == path.resolve():
        raise ImportFileError("the rejects file must not be the file being imported")
    rejects_path.unlink(missing_ok=True)
    ingestor = InvoiceIngestor(pool, clock, topics, grace_days)
    summary = ImportSummary(source_registered=default_currency is not None)
    rejects = _Rejects(rejects_path)
    try:
        batch: list[Row] = []
        for row in reader:
            batch.append(row)
            if len(batch) >= chunk:
                await _flush(ingestor, tenant_id, source, batch, summary, rejects)
                batch = []
                if progress is not None:
                    progress(summary.rows, reader.bytes_read, reader.total_bytes)
        if batch:
            await _flush(ingestor, tenant_id, source, batch, summary, rejects)
    finally:
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
