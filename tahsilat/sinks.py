"""Local stand-ins for the email (SMTP) and SMS (HTTP) providers.

Every message the platform sends lands here, in memory and on disk, so tests can assert on it and a
person can read it in a browser. One process, one asyncio loop:

    python -m tahsilat.sinks --smtp-port 2525 --http-port 8025 [--host 127.0.0.1] [--dir var/sinks]
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import email
import email.policy
import html
import json
import shutil
import signal
import socket
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import uvicorn
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI, HTTPException, Response
from fastapi.responses import HTMLResponse
from pydantic import BaseModel, Field

E164 = r"^\+[1-9][0-9]{1,14}$"


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _body(msg: EmailMessage, subtype: str) -> str | None:
    """The decoded text/<subtype> body, or None: what a mail client would show for that type.
    SMTP puts CRLF on the wire; bodies come back with the "\n" the sender wrote."""
    part = msg.get_body(preferencelist=(subtype,))
    return part.get_content().replace("\r\n", "\n") if part is not None else None


class SinkStore:
    """What the sinks received. In memory for the API, appended to `directory` for people.

    Ids only ever grow (even across DELETE /messages) so a client's `since_id` stays meaningful.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.mailbox = directory / "mailbox"
        self.sms_log = directory / "sms.jsonl"
        self.mailbox.mkdir(parents=True, exist_ok=True)
        self.emails: list[dict[str, Any]] = []
        self.sms: list[dict[str, Any]] = []
        self._sms_by_key: dict[str, dict[str, Any]] = {}
        self._email_seq = 0
        self._sms_seq = 0

    def add_email(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> dict[str, Any]:
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert isinstance(msg, EmailMessage)
        self._email_seq += 1
        headers: dict[str, str] = {}
        for name, value in msg.items():
            headers.setdefault(name, str(value))  # first wins: Received & co. may repeat
        record = {
            "id": self._email_seq,
            "received_at": _now(),
            "mail_from": mail_from,
            "rcpt_tos": list(rcpt_tos),
            "subject": str(msg["Subject"] or ""),
            "message_id": str(msg["Message-ID"]) if msg["Message-ID"] else None,
            "language": str(msg["Content-Language"]) if msg["Content-Language"] else None,
            "headers": headers,
            "text": _body(msg, "plain"),
            "html": _body(msg, "html"),
        }
        (self.mailbox / f"{record['id']}.eml").write_bytes(raw)
        self.emails.append(record)
        return record

    def add_sms(self, to: str, text: str, message_id: str | None) -> tuple[dict[str, Any], bool]:
        """Store an SMS once per message_id (as real providers do); returns (record, is_new)."""
        if message_id is not None and message_id in self._sms_by_key:
            return self._sms_by_key[message_id], False
        self._sms_seq += 1
        record = {"id": self._sms_seq, "received_at": _now(), "to": to, "text": text, "message_id": message_id}
        with self.sms_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.sms.append(record)
        if message_id is not None:
            self._sms_by_key[message_id] = record
        return record, True

    def clear(self) -> None:
        self.emails.clear()
        self.sms.clear()
        self._sms_by_key.clear()
        shutil.rmtree(self.mailbox, ignore_errors=True)
        self.mailbox.mkdir(parents=True, exist_ok=True)
        self.sms_log.unlink(missing_ok=True)


class MailboxHandler:
    """aiosmtpd handler: accept every message, like a provider that never bounces."""

    def __init__(self, store: SinkStore) -> None:
        self.store = store

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.store.add_email(envelope.mail_from or "", envelope.rcpt_tos, raw)
        return "250 Message accepted for delivery"


class SmsIn(BaseModel):
    to: str = Field(pattern=E164)
    text: str = Field(min_length=1)
    message_id: str | None = None


def _render_page(store: SinkStore) -> str:
    e = html.escape
    mail_rows = "".join(
        f"<tr><td>{m['id']}</td><td>{e(m['received_at'])}</td><td>{e(', '.join(m['rcpt_tos']))}</td>"
        f"<td>{e(m['language'] or '')}</td><td><a href='/emails/{m['id']}'>{e(m['subject'])}</a></td></tr>"
        for m in reversed(store.emails)
    )
    sms_rows = "".join(
        f"<tr><td>{s['id']}</td><td>{e(s['received_at'])}</td><td>{e(s['to'])}</td><td>{e(s['text'])}</td></tr>"
        for s in reversed(store.sms)
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Tahsilat sinks</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left;vertical-align:top}</style>"
        "</head><body>"
        f"<h1>Emails ({len(store.emails)})</h1><table><tr><th>#</th><th>time</th><th>to</th>"
        f"<th>lang</th><th>subject</th></tr>{mail_rows}</table>"
        f"<h1>SMS ({len(store.sms)})</h1><table><tr><th>#</th><th>time</th><th>to</th>"
        f"<th>text</th></tr>{sms_rows}</table></body></html>"
    )


def create_app(store: SinkStore) -> FastAPI:
    """The HTTP side: the SMS provider API plus read access to everything received."""
    app = FastAPI(title="Tahsilat sinks")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/sms", status_code=202)
    async def post_sms(sms: SmsIn) -> dict[str, Any]:
        record, new = store.add_sms(sms.to, sms.text, sms.message_id)
        return {"id": record["id"], "status": "accepted" if new else "duplicate"}

    @app.get("/sms")
    async def list_sms(to: str | None = None) -> list[dict[str, Any]]:
        return [s for s in store.sms if to is None or s["to"] == to]

    @app.get("/emails")
    async def list_emails(to: str | None = None, since_id: int = 0) -> list[dict[str, Any]]:
        want = to.lower() if to else None
        return [
            m for m in store.emails
            if m["id"] > since_id and (want is None or want in (r.lower() for r in m["rcpt_tos"]))
        ]

    @app.get("/emails/{email_id}")
    async def get_email(email_id: int) -> dict[str, Any]:
        for m in store.emails:
            if m["id"] == email_id:
                return m
        raise HTTPException(404, f"no email {email_id}")

    @app.delete("/messages", status_code=204)
    async def clear() -> Response:
        store.clear()
        return Response(status_code=204)

    @app.get("/", response_class=HTMLResponse)
    async def index() -> str:
        return _render_page(store)

    return app


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: run_sinks is stopped by cancellation, and uvicorn
    would otherwise re-raise a captured SIGTERM after shutdown, killing the process before the
    SMTP server is closed (and stealing signals from any process that embeds run_sinks)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host, port), family=family)


async def run_sinks(host: str, smtp_port: int, http_port: int, directory: Path | str) -> None:
    """Serve SMTP and HTTP on the running loop until cancelled, then shut both down gracefully."""
    loop = asyncio.get_running_loop()
    store = SinkStore(Path(directory))
    handler = MailboxHandler(store)
    sessions: weakref.WeakSet[SMTP] = weakref.WeakSet()

    def smtp_session() -> SMTP:
        proto = SMTP(handler, hostname="tahsilat-sinks", enable_SMTPUTF8=True, loop=loop)
        sessions.add(proto)
        return proto

    http_sock = _listen(host, http_port)  # bound before we announce, so a port clash fails loudly
    try:
        smtp = await loop.create_server(smtp_session, host=host, port=smtp_port)
    except BaseException:
        http_sock.close()
        raise
    config = uvicorn.Config(
        create_app(store), log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    print(f"sinks: SMTP on {host}:{smtp_port}, HTTP on http://{host}:{http_port}", flush=True)
    serving = asyncio.create_task(server.serve(sockets=[http_sock]))
    try:
        await asyncio.shield(serving)
    except asyncio.CancelledError:
        server.should_exit = True
        await serving
        raise
    finally:
        smtp.close()
        for proto in list(sessions):
            if proto.transport is not None:
                proto.transport.close()
        await smtp.wait_closed()


async def _serve_until_signal(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    sinks = asyncio.create_task(run_sinks(args.host, args.smtp_port, args.http_port, args.dir))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sinks.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await sinks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tahsilat.sinks", description="Local email (SMTP) and SMS (HTTP) provider sinks."
    )
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dir", type=Path, default=Path("var/sinks"))
    try:
        asyncio.run(_serve_until_signal(parser.parse_args(argv)))
    except OSError as exc:  # a port clash deserves one line, not a traceback
        parser.exit(1, f"sinks: {exc}\n")


if __name__ == "__main__":
    main()
