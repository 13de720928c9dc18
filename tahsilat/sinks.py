"""Local stand-ins for the email (SMTP), SMS (HTTP) and webhook providers.

Every message the platform sends lands here, in memory and on disk, so tests can assert on it and a
person can read it in a browser. One process, one asyncio loop:

    python -m tahsilat.sinks --smtp-port 2525 --http-port 8025 [--host 127.0.0.1] [--dir var/sinks]

They answer the way real providers do, so the real request shapes are exercised:

- SMTP accepts everything except recipients at `bounce.example.com` (550 5.1.1, permanent) and
  `busy.example.com` (451 4.3.0, try later).
- SMS, two ways: `POST /sms` {to, text, message_id} (the simple JSON gateway), and Twilio's Messages
  API, `POST /2010-04-01/Accounts/{sid}/Messages.json` (form, basic auth with the sink's account sid
  and auth token, `Idempotency-Key` deduplicated). Numbers starting +1555000 are invalid (400, Twilio
  error 21211). A `StatusCallback` gets a signed (X-Twilio-Signature) status report: "delivered", or
  "undelivered" (ErrorCode 30003) for numbers starting +1555999. Both land in `GET /sms`.
- Webhooks: `POST /webhooks/{path}` records path, headers and raw body (`GET /webhooks`); path "gone"
  answers 410.
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import email
import email.policy
import hmac
import html
import json
import re
import shutil
import signal
import socket
import uuid
import weakref
from collections.abc import Iterator
from datetime import datetime, timezone
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from aiosmtpd.smtp import SMTP, Envelope, Session
from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from services.notifier.domain.signatures import TWILIO_SIGNATURE_HEADER, twilio_signature
from shared.http import KEEP_ALIVE_SECONDS

E164 = r"^\+[1-9][0-9]{1,14}$"
TWILIO_ACCOUNT_SID = "ACsink"
TWILIO_AUTH_TOKEN = "sink-auth-token"
INVALID_NUMBER_PREFIX = "+1555000"  # Twilio answers 400, error 21211
UNDELIVERED_NUMBER_PREFIX = "+1555999"  # accepted, then reported undelivered (error 30003)
BOUNCE_DOMAIN = "bounce.example.com"  # RCPT answered 550 5.1.1
BUSY_DOMAIN = "busy.example.com"  # RCPT answered 451 4.3.0
CALLBACK_ATTEMPTS = 6  # 0.1 s apart, doubling: about 3 s in all


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def _body(msg: Message, subtype: str) -> str | None:
    """The decoded text/<subtype> body, or None: what a mail client would show for that type.
    SMTP puts CRLF on the wire; bodies come back with the "\n" the sender wrote."""
    for part in msg.walk():
        if (part.get_content_type() == f"text/{subtype}" and part.get_content_disposition() != "attachment"):
            payload = part.get_payload(decode=True)
            charset = part.get_content_charset() or "us-ascii"
            try:
                text = payload.decode(charset, errors="replace")
            except LookupError:  # a charset Python does not know
                text = payload.decode("utf-8", errors="replace")
            return text.replace("\r\n", "\n")
    return None


def _header_text(value: str) -> str:
    """A header as a mail client shows it: unfolded, RFC 2047 encoded words decoded."""
    value = _FOLD.sub("", value)
    return str(make_header(decode_header(value))) if "=?" in value else value


_FOLD = re.compile(r"\r?\n(?=[ \t])")


class SinkStore:
    """What the sinks received. In memory for the API, appended to `directory` for people.

    Ids only ever grow (even across DELETE /messages) so a client's `since_id` stays meaningful.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.mailbox = directory / "mailbox"
        self.sms_log = directory / "sms.jsonl"
        self.webhook_log = directory / "webhooks.jsonl"
        self.mailbox.mkdir(parents=True, exist_ok=True)
        self.emails: list[dict[str, Any]] = []
        self.sms: list[dict[str, Any]] = []
        self.webhooks: list[dict[str, Any]] = []
        self._sms_by_key: dict[str, dict[str, Any]] = {}
        self._email_seq = 0
        self._sms_seq = 0
        self._webhook_seq = 0

    def add_email(self, mail_from: str, rcpt_tos: list[str], raw: bytes) -> dict[str, Any]:
        # compat32 parsing and decoding only the headers kept: the default policy's header objects
        # cost ten times as much, and made the sink, not the sender, the limit of a load test
        msg = email.message_from_bytes(raw, policy=email.policy.compat32)
        self._email_seq += 1
        headers: dict[str, str] = {}
        for name, value in msg.raw_items():
            if name not in headers:  # first wins: Received & co. may repeat
                headers[name] = _header_text(value)
        record = {
            "id": self._email_seq,
            "received_at": _now(),
            "mail_from": mail_from,
            "rcpt_tos": list(rcpt_tos),
            "subject": _header_text(msg.get("Subject", "")),
            "message_id": _header_text(msg["Message-ID"]) if msg["Message-ID"] else None,
            "language": _header_text(msg["Content-Language"]) if msg["Content-Language"] else None,
            "headers": headers,
            "text": _body(msg, "plain"),
            "html": _body(msg, "html"),
        }
        (self.mailbox / f"{record['id']}.eml").write_bytes(raw)
        self.emails.append(record)
        return record

    def add_sms(self, to: str, text: str, message_id: str | None,
                extra: dict[str, Any] | None = None) -> tuple[dict[str, Any], bool]:
        """Store an SMS once per message_id (as real providers do); returns (record, is_new).
        `extra`: what else the provider's API was told (the Twilio API's sid, from, callback...)."""
        if message_id is not None and message_id in self._sms_by_key:
            return self._sms_by_key[message_id], False
        self._sms_seq += 1
        record = {"id": self._sms_seq, "received_at": _now(), "to": to, "text": text, "message_id": message_id,
                  **(extra or {})}
        with self.sms_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.sms.append(record)
        if message_id is not None:
            self._sms_by_key[message_id] = record
        return record, True

    def add_webhook(self, path: str, headers: dict[str, str], body: bytes, status_code: int) -> dict[str, Any]:
        """Every POST, as received (a receiver does not deduplicate for the sender)."""
        self._webhook_seq += 1
        record = {"id": self._webhook_seq, "received_at": _now(), "path": path, "headers": headers,
                  "body": body.decode("utf-8", errors="replace"), "status_code": status_code}
        with self.webhook_log.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.webhooks.append(record)
        return record

    def clear(self) -> None:
        self.emails.clear()
        self.sms.clear()
        self.webhooks.clear()
        self._sms_by_key.clear()
        shutil.rmtree(self.mailbox, ignore_errors=True)
        self.mailbox.mkdir(parents=True, exist_ok=True)
        self.sms_log.unlink(missing_ok=True)
        self.webhook_log.unlink(missing_ok=True)


class MailboxHandler:
    """aiosmtpd handler: accept every message, except for the two test domains that refuse."""

    def __init__(self, store: SinkStore) -> None:
        self.store = store

    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        domain = address.rpartition("@")[2].lower()
        if domain == BOUNCE_DOMAIN:
            return f"550 5.1.1 <{address}>: Recipient address rejected: User unknown"
        if domain == BUSY_DOMAIN:
            return f"451 4.3.0 <{address}>: Mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or b""
        self.store.add_email(envelope.mail_from or "", envelope.rcpt_tos, raw)
        return "250 Message accepted for delivery"


class SmsIn(BaseModel):
    to: str = Field(pattern=E164)
    text: str = Field(min_length=1)
    message_id: str | None = None


def _twilio_error(status: int, code: int, message: str) -> JSONResponse:
    """Twilio's error body (https://www.twilio.com/docs/errors/<code>)."""
    return JSONResponse(status_code=status, content={
        "code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}", "status": status})


def _basic_auth(header: str | None) -> tuple[str, str] | None:
    scheme, _, value = (header or "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        user, sep, password = base64.b64decode(value.strip(), validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    return (user, password) if sep else None


def _same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def _twilio_message(record: dict[str, Any]) -> dict[str, Any]:
    """The Message resource as Twilio's API returns it on create (the fields a client reads)."""
    account, sid = record["account_sid"], record["sid"]
    return {
        "sid": sid, "account_sid": account, "to": record["to"], "from": record.get("from"),
        "messaging_service_sid": record.get("messaging_service_sid"), "body": record["text"],
        "status": "queued", "direction": "outbound-api", "api_version": "2010-04-01", "num_segments": "1",
        "date_created": record["received_at"], "error_code": None, "error_message": None,
        "uri": f"/2010-04-01/Accounts/{account}/Messages/{sid}.json",
    }


async def _send_status_callback(record: dict[str, Any], auth_token: str, client: httpx.AsyncClient) -> None:
    """Report the message's fate to its StatusCallback as Twilio does: a signed form POST. Retried on
    connection errors only (an answer, whatever its status, is an answer)."""
    to = record["to"]
    params = {"MessageSid": record["sid"], "SmsSid": record["sid"], "AccountSid": record["account_sid"],
              "To": to, "ApiVersion": "2010-04-01"}
    if record.get("from"):
        params["From"] = record["from"]
    if record.get("messaging_service_sid"):
        params["MessagingServiceSid"] = record["messaging_service_sid"]
    if to.startswith(UNDELIVERED_NUMBER_PREFIX):
        params.update(MessageStatus="undelivered", SmsStatus="undelivered", ErrorCode="30003")
    else:
        params.update(MessageStatus="delivered", SmsStatus="delivered")
    url = record["status_callback"]
    headers = {TWILIO_SIGNATURE_HEADER: twilio_signature(auth_token, url, params), "User-Agent": "TwilioProxy/1.1"}
    outcome: dict[str, Any] = {"status": params["MessageStatus"], "attempts": 0}
    record["callback"] = outcome
    delay = 0.1
    await asyncio.sleep(delay)  # after the API reply, as the real thing: status arrives later
    for attempt in range(1, CALLBACK_ATTEMPTS + 1):
        outcome["attempts"] = attempt
        try:
            response = await client.post(url, data=params, headers=headers)
        except httpx.TransportError as exc:
            outcome["error"] = repr(exc)
            if attempt < CALLBACK_ATTEMPTS:
                await asyncio.sleep(delay)
                delay *= 2
            continue
        outcome.pop("error", None)
        outcome["answered"] = response.status_code
        return


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
    hook_rows = "".join(
        f"<tr><td>{w['id']}</td><td>{e(w['received_at'])}</td><td>/webhooks/{e(w['path'])}</td>"
        f"<td>{w['status_code']}</td><td><pre>{e(w['body'][:2000])}</pre></td></tr>"
        for w in reversed(store.webhooks)
    )
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>Tahsilat sinks</title>"
        "<style>body{font-family:sans-serif}td,th{padding:2px 8px;text-align:left;vertical-align:top}"
        "pre{margin:0;white-space:pre-wrap}</style>"
        "</head><body>"
        f"<h1>Emails ({len(store.emails)})</h1><table><tr><th>#</th><th>time</th><th>to</th>"
        f"<th>lang</th><th>subject</th></tr>{mail_rows}</table>"
        f"<h1>SMS ({len(store.sms)})</h1><table><tr><th>#</th><th>time</th><th>to</th>"
        f"<th>text</th></tr>{sms_rows}</table>"
        f"<h1>Webhooks ({len(store.webhooks)})</h1><table><tr><th>#</th><th>time</th><th>path</th>"
        f"<th>answered</th><th>body</th></tr>{hook_rows}</table></body></html>"
    )


def create_app(store: SinkStore, *, twilio_account_sid: str = TWILIO_ACCOUNT_SID,
               twilio_auth_token: str = TWILIO_AUTH_TOKEN) -> FastAPI:
    """The HTTP side: the SMS provider APIs and a webhook receiver, plus read access to everything
    received. Status callbacks run as tasks in `app.state.background` (cancel them on shutdown,
    then close `app.state.callbacks`)."""
    app = FastAPI(title="Tahsilat sinks")
    background: set[asyncio.Task[None]] = set()
    app.state.background = background
    # one client for every callback: a new one per SMS built an SSL context each time, which made
    # the sink, not the notifier, what limited a load test
    app.state.callbacks = None

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

    @app.post("/2010-04-01/Accounts/{account_sid}/Messages.json", status_code=201)
    async def twilio_create_message(account_sid: str, request: Request) -> JSONResponse:
        credentials = _basic_auth(request.headers.get("authorization"))
        if (credentials is None or not _same(credentials[0], twilio_account_sid)
                or not _same(credentials[1], twilio_auth_token) or account_sid != twilio_account_sid):
            return _twilio_error(401, 20003, "Authenticate")
        form = {k: str(v) for k, v in (await request.form()).items()}
        to, body = form.get("To", ""), form.get("Body", "")
        sender, service = form.get("From") or None, form.get("MessagingServiceSid") or None
        if not to:
            return _twilio_error(400, 21604, "A 'To' phone number is required.")
        if not re.fullmatch(E164, to) or to.startswith(INVALID_NUMBER_PREFIX):
            return _twilio_error(400, 21211, f"Invalid 'To' Phone Number: {to}")
        if not body:
            return _twilio_error(400, 21602, "Message body is required.")
        if not (sender or service):
            return _twilio_error(400, 21603, "A 'From' or 'MessagingServiceSid' parameter is required.")
        callback = form.get("StatusCallback") or None
        record, new = store.add_sms(to, body, request.headers.get("idempotency-key"), extra={
            "provider": "twilio", "sid": f"SM{uuid.uuid4().hex}", "account_sid": account_sid, "from": sender,
            "messaging_service_sid": service, "status_callback": callback})
        if new and callback:
            if app.state.callbacks is None:
                app.state.callbacks = httpx.AsyncClient(timeout=5)
            task = asyncio.create_task(_send_status_callback(record, twilio_auth_token, app.state.callbacks))
            background.add(task)
            task.add_done_callback(background.discard)
        return JSONResponse(status_code=201, content=_twilio_message(record))

    @app.post("/webhooks/{path:path}")
    async def post_webhook(path: str, request: Request) -> JSONResponse:
        status = 410 if path == "gone" else 200
        record = store.add_webhook(path, dict(request.headers), await request.body(), status)
        if status == 410:
            return JSONResponse(status_code=410, content={"error": "this endpoint is gone"})
        return JSONResponse(status_code=200, content={"id": f"wh-{record['id']}", "status": "received"})

    @app.get("/webhooks")
    async def list_webhooks(path: str | None = None, since_id: int = 0) -> list[dict[str, Any]]:
        return [w for w in store.webhooks if w["id"] > since_id and (path is None or w["path"] == path)]

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


async def run_sinks(host: str, smtp_port: int, http_port: int, directory: Path | str, *,
                    twilio_account_sid: str = TWILIO_ACCOUNT_SID, twilio_auth_token: str = TWILIO_AUTH_TOKEN) -> None:
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
    app = create_app(store, twilio_account_sid=twilio_account_sid, twilio_auth_token=twilio_auth_token)
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, lifespan="off", timeout_graceful_shutdown=2,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
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
        for task in list(app.state.background):  # status callbacks still retrying
            task.cancel()
        await asyncio.gather(*list(app.state.background), return_exceptions=True)
        if app.state.callbacks is not None:
            await app.state.callbacks.aclose()
        smtp.close()
        for proto in list(sessions):
            if proto.transport is not None:
                proto.transport.close()
        await smtp.wait_closed()


async def _serve_until_signal(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    sinks = asyncio.create_task(run_sinks(args.host, args.smtp_port, args.http_port, args.dir,
                                          twilio_account_sid=args.twilio_account_sid,
                                          twilio_auth_token=args.twilio_auth_token))
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, sinks.cancel)
    with contextlib.suppress(asyncio.CancelledError):
        await sinks


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m tahsilat.sinks", description="Local email (SMTP), SMS and webhook (HTTP) provider sinks."
    )
    parser.add_argument("--smtp-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--dir", type=Path, default=Path("var/sinks"))
    parser.add_argument("--twilio-account-sid", default=TWILIO_ACCOUNT_SID,
                        help="what the Twilio-shaped SMS API accepts as account sid (basic-auth user)")
    parser.add_argument("--twilio-auth-token", default=TWILIO_AUTH_TOKEN,
                        help="its auth token (basic-auth password; signs status callbacks)")
    try:
        asyncio.run(_serve_until_signal(parser.parse_args(argv)))
    except OSError as exc:  # a port clash deserves one line, not a traceback
        parser.exit(1, f"sinks: {exc}\n")


if __name__ == "__main__":
    main()
