"""The delivery providers over real TCP: SMTP with STARTTLS/implicit TLS and AUTH against aiosmtpd, the
SMTP, Twilio-shaped SMS and webhook sinks, and how each failure is classified (permanent or not)."""
from __future__ import annotations

import asyncio
import contextlib
import email
import email.policy
import json
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import httpx
import pytest
import trustme
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from fastapi import FastAPI, Request
from fastapi.responses import PlainTextResponse

from services.notifier.adapters.providers import (
    DeliveryError,
    EmailSender,
    SmsSender,
    TwilioSmsSender,
    WebhookSender,
    build_email_sender,
    build_sms_sender,
)
from services.notifier.adapters.templates import RenderedEmail
from services.notifier.domain.signatures import SignatureError, verify, verify_twilio
from services.notifier.settings import NotifierSettings
from shared.host import serve_in_process
from tahsilat.embedded import free_port
from tahsilat.sinks import TWILIO_ACCOUNT_SID, TWILIO_AUTH_TOKEN
from tests.integration.test_notifier import Sinks, sinks  # noqa: F401 - the fixture
from tests.support import wait_for

pytestmark = pytest.mark.integration

USER, PASSWORD = "tahsilat", "s3cret-smtp-pass"
EMAIL = RenderedEmail(subject="Ödeme hatırlatması: INV-1", text="Sayın Ayşe Hanım,\nvadesi geçti.\n",
                      html="<p>Sayın Ayşe Hanım, <b>vadesi geçti</b>.</p>", language="tr", fallback_from=None)
AT = datetime(2026, 3, 10, 10, 0, tzinfo=timezone.utc)


# -- an SMTP server with TLS and AUTH (aiosmtpd, on this loop) ------------------------------------------
@dataclass
class SmtpServer:
    port: int
    ca_file: str
    messages: list[dict[str, Any]] = field(default_factory=list)
    logins: list[tuple[str, str, bool]] = field(default_factory=list)  # (user, password, accepted)
    protocols: list[SMTP] = field(default_factory=list)  # one per connection the server accepted

    def drop_connections(self) -> None:
        """The server closes every connection (as an idle timeout or a restart does)."""
        for proto in self.protocols:
            if proto.transport is not None:
                proto.transport.close()


class _Recorder:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, smtp: SMTP, session: Session, envelope: Envelope) -> str:
        transport = smtp.transport
        self.server.messages.append({
            "rcpt_tos": list(envelope.rcpt_tos), "raw": envelope.original_content or b"",
            "authenticated": session.authenticated, "login": getattr(session.auth_data, "login", None),
            "tls": session.ssl is not None or (transport is not None
                                               and transport.get_extra_info("sslcontext") is not None),
        })
        return "250 OK"


@contextlib.asynccontextmanager
async def smtp_server(tmp_path: Path, *, implicit_tls: bool = False) -> AsyncIterator[SmtpServer]:
    """STARTTLS offered and required, AUTH required (over TLS); or, with implicit_tls, TLS from the
    first byte. Certificates from a throw-away CA whose certificate is in `ca_file`."""
    ca = trustme.CA()
    ca_file = tmp_path / "smtp-ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(tls)
    server = SmtpServer(port=free_port(), ca_file=str(ca_file))
    handler = _Recorder(server)

    def authenticator(smtp: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: LoginPassword) -> AuthResult:
        user, password = auth_data.login.decode(), auth_data.password.decode()
        ok = (user, password) == (USER, PASSWORD)
        server.logins.append((user, password, ok))
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    loop = asyncio.get_running_loop()
    protocols = server.protocols

    def factory() -> SMTP:
        proto = SMTP(handler, hostname="smtp.test", loop=loop, authenticator=authenticator, auth_required=True,
                     **({"auth_require_tls": False} if implicit_tls  # aiosmtpd only knows STARTTLS as "TLS"
                        else {"tls_context": tls, "require_starttls": True}))
        protocols.append(proto)
        return proto

    listener = await loop.create_server(factory, host="127.0.0.1", port=server.port,
                                        ssl=tls if implicit_tls else None)
    try:
        yield server
    finally:
        listener.close()
        server.drop_connections()
        await listener.wait_closed()


def _sender(port: int, **kw: Any) -> EmailSender:
    return EmailSender("127.0.0.1", port, "Tahsilat <collections@tahsilat.test>", timeout=5, **kw)


async def _send(sender: EmailSender, to: str = "ayse@example.com.tr", key: str = "case-1:reminder:email") -> str:
    return await sender.send(to=to, email=EMAIL, language="tr", key=key,
                             unsubscribe_url="https://tahsilat.test/v1/unsubscribe/tok", at=AT)


async def _refused(coro) -> DeliveryError:
    with pytest.raises(DeliveryError) as exc:
        await coro
    return exc.value


# -- SMTP -------------------------------------------------------------------------------------------
async def test_starttls_and_auth_deliver_with_every_header(tmp_path):
    async with smtp_server(tmp_path) as server:
        sender = _sender(server.port, tls="starttls", username=USER, password=PASSWORD, ca_file=server.ca_file)
        message_id = await _send(sender)

        assert server.logins == [(USER, PASSWORD, True)]
        [got] = server.messages
        assert got["tls"] and got["authenticated"] and got["login"] == USER.encode()
        assert got["rcpt_tos"] == ["ayse@example.com.tr"]
        msg = email.message_from_bytes(got["raw"], policy=email.policy.default)
        assert msg["Message-ID"] == message_id and message_id.endswith("@tahsilat>")
        assert msg["X-Tahsilat-Notification-Key"] == "case-1:reminder:email"
        assert msg["List-Unsubscribe"] == "<https://tahsilat.test/v1/unsubscribe/tok>"
        assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
        assert msg["Date"] == "Tue, 10 Mar 2026 10:00:00 +0000"
        assert msg.get_all("Content-Language") == ["tr"]
        assert msg["Subject"] == EMAIL.subject
        assert msg.get_body(("plain",)).get_content().replace("\r\n", "\n") == EMAIL.text

        # The same key, the same Message-ID: a resend after a crash is recognisable as one.
        assert await _send(sender) == message_id


async def test_auto_upgrades_when_offered_and_can_skip_certificate_checks(tmp_path):
    async with smtp_server(tmp_path) as server:
        await _send(_sender(server.port, tls="auto", username=USER, password=PASSWORD, validate_certs=False))
        assert [m["tls"] for m in server.messages] == [True]
        assert server.logins == [(USER, PASSWORD, True)]


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")  # aiosmtpd cannot tell implicit TLS
async def test_implicit_tls(tmp_path):
    async with smtp_server(tmp_path, implicit_tls=True) as server:
        await _send(_sender(server.port, tls="tls", username=USER, password=PASSWORD, ca_file=server.ca_file))
        assert [(m["tls"], m["authenticated"]) for m in server.messages] == [(True, True)]


async def test_wrong_password_is_transient_and_sends_nothing(tmp_path):
    """Our credentials are wrong, not the recipient: an operator fixes them and the message can still go."""
    async with smtp_server(tmp_path) as server:
        error = await _refused(_send(_sender(server.port, tls="starttls", username=USER, password="wrong",
                                             ca_file=server.ca_file)))
        assert (error.permanent, error.code) == (False, "smtp_535")
        assert server.logins and all(not ok for _, _, ok in server.logins)
        assert server.messages == []


async def test_an_untrusted_certificate_fails_before_any_credential_is_sent(tmp_path):
    async with smtp_server(tmp_path) as server:
        error = await _refused(_send(_sender(server.port, tls="starttls", username=USER, password=PASSWORD)))
        assert (error.permanent, error.code) == (False, "smtp_tls")
        error = await _refused(_send(_sender(server.port, tls="tls", username=USER, password=PASSWORD,
                                             ca_file=server.ca_file)))  # it speaks STARTTLS, not implicit TLS
        assert (error.permanent, error.code) == (False, "smtp_tls")
        # tls=none is an explicit choice; this server will not take a password without TLS, so nothing goes.
        error = await _refused(_send(_sender(server.port, tls="none", username=USER, password=PASSWORD)))
        assert (error.permanent, error.code) == (False, "smtp_auth_unsupported")
        assert server.logins == [] and server.messages == []


async def test_no_password_in_clear_text_unless_told(sinks: Sinks):  # noqa: F811
    """The sinks offer no STARTTLS: auto does not send the password anyway; starttls refuses the server."""
    error = await _refused(_send(_sender(sinks.smtp_port, tls="auto", username=USER, password=PASSWORD)))
    assert (error.permanent, error.code) == (False, "smtp_tls_required")
    error = await _refused(_send(_sender(sinks.smtp_port, tls="starttls")))
    assert (error.permanent, error.code) == (False, "smtp_tls")
    assert await sinks.emails() == []
    await _send(_sender(sinks.smtp_port, tls="none"))  # no credentials, no TLS: what the sinks are for
    assert len(await sinks.emails()) == 1


async def test_smtp_550_is_permanent_451_and_connection_errors_transient(sinks: Sinks):  # noqa: F811
    sender = _sender(sinks.smtp_port)
    bounced = await _refused(_send(sender, to="nobody@bounce.example.com"))
    assert (bounced.permanent, bounced.code) == (True, "smtp_550")
    assert "5.1.1" in str(bounced)
    busy = await _refused(_send(sender, to="someone@busy.example.com"))
    assert (busy.permanent, busy.code) == (False, "smtp_451")
    nobody_listens = await _refused(_send(_sender(free_port())))
    assert (nobody_listens.permanent, nobody_listens.code) == (False, "smtp_connect")
    assert await sinks.emails() == []
    await _send(sender, to="ok@example.com.tr")
    assert [m["rcpt_tos"] for m in await sinks.emails()] == [["ok@example.com.tr"]]


async def test_email_sender_from_settings(tmp_path):
    async with smtp_server(tmp_path) as server:
        settings = NotifierSettings(database_url="postgresql://unused/db", kafka_bootstrap_servers="unused:9092",
                                    smtp_port=server.port, smtp_tls="starttls", smtp_username=USER,
                                    smtp_password=PASSWORD, smtp_ca_file=server.ca_file)
        await _send(build_email_sender(settings))
        assert len(server.messages) == 1 and server.logins == [(USER, PASSWORD, True)]


async def test_a_connection_carries_several_messages_and_logs_in_once(tmp_path):
    async with smtp_server(tmp_path) as server:
        sender = _sender(server.port, tls="starttls", username=USER, password=PASSWORD, ca_file=server.ca_file,
                         messages_per_connection=2)
        for i in range(5):
            await _send(sender, key=f"case-{i}:reminder:email")
        # 2 + 2 + 1 messages: three connections, three logins, every message once
        assert (len(server.protocols), sender.connections_opened) == (3, 3)
        assert server.logins == [(USER, PASSWORD, True)] * 3
        keys = [email.message_from_bytes(m["raw"], policy=email.policy.default)["X-Tahsilat-Notification-Key"]
                for m in server.messages]
        assert keys == [f"case-{i}:reminder:email" for i in range(5)]
        assert all(m["tls"] and m["authenticated"] for m in server.messages)
        await sender.aclose()


async def test_at_most_max_connections_at_once(tmp_path):
    async with smtp_server(tmp_path) as server:
        sender = _sender(server.port, tls="starttls", username=USER, password=PASSWORD, ca_file=server.ca_file,
                         max_connections=3)
        await asyncio.gather(*(_send(sender, key=f"k{i}") for i in range(30)))
        assert len(server.messages) == 30 and len({m["raw"] for m in server.messages}) == 30
        assert len(server.protocols) == 3 and sender.connections_opened == 3
        await sender.aclose()
        async def all_closed() -> bool:
            return all(p.transport is None or p.transport.is_closing() for p in server.protocols)
        await wait_for(all_closed, message="the idle connections quit")


async def test_a_connection_the_server_dropped_is_replaced_and_the_message_goes_once(tmp_path):
    async with smtp_server(tmp_path) as server:
        sender = _sender(server.port, tls="starttls", username=USER, password=PASSWORD, ca_file=server.ca_file)
        await _send(sender, key="first")
        # dropped while idle, noticed before reuse
        server.drop_connections()
        async def client_saw_it() -> bool:
            return not sender._idle[0].client.is_connected
        await wait_for(client_saw_it, message="the client sees the close")
        await _send(sender, key="second")
        # dropped at the moment of reuse: the client still believes it open, and its MAIL fails
        server.drop_connections()
        await _send(sender, key="third")
        keys = [email.message_from_bytes(m["raw"], policy=email.policy.default)["X-Tahsilat-Notification-Key"]
                for m in server.messages]
        assert keys == ["first", "second", "third"]
        assert sender.connections_opened == 3


async def test_a_failed_connection_is_not_reused_nor_an_old_idle_one(sinks: Sinks):  # noqa: F811
    sender = _sender(sinks.smtp_port)
    await _refused(_send(sender, to="nobody@bounce.example.com"))  # 550: that connection is quit
    await _send(sender, to="ok@example.com.tr")
    assert sender.connections_opened == 2
    await _send(sender, to="ok@example.com.tr", key="again")  # reused
    assert sender.connections_opened == 2
    stale = _sender(sinks.smtp_port, idle_seconds=0)  # every idle connection is too old to reuse
    await _send(stale, to="ok@example.com.tr", key="a")
    await _send(stale, to="ok@example.com.tr", key="b")
    assert stale.connections_opened == 2
    assert [m["rcpt_tos"] for m in await sinks.emails()] == [["ok@example.com.tr"]] * 4
    await sender.aclose()
    await stale.aclose()


# -- SMS --------------------------------------------------------------------------------------------
@dataclass
class StatusReceiver:
    url: str
    received: list[tuple[dict[str, str], str | None]]

    async def statuses(self, sid: str) -> list[tuple[dict[str, str], str | None]]:
        return [(p, s) for p, s in self.received if p.get("MessageSid") == sid]


@pytest.fixture
async def status_receiver() -> AsyncIterator[StatusReceiver]:
    """Where the notifier will hear from the SMS provider: POST /v1/webhooks/sms/status."""
    received: list[tuple[dict[str, str], str | None]] = []
    app = FastAPI()

    @app.post("/v1/webhooks/sms/status")
    async def status(request: Request) -> PlainTextResponse:
        form = await request.form()
        received.append(({k: str(v) for k, v in form.items()}, request.headers.get("x-twilio-signature")))
        return PlainTextResponse("", status_code=204)

    async with serve_in_process(app) as url:
        yield StatusReceiver(f"{url}/v1/webhooks/sms/status", received)


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient() as client:
        yield client


def _twilio(sinks: Sinks, http: httpx.AsyncClient, **kw: Any) -> TwilioSmsSender:  # noqa: F811
    options: dict[str, Any] = {"account_sid": TWILIO_ACCOUNT_SID, "auth_token": TWILIO_AUTH_TOKEN,
                               "from_number": "+15005550006", "api_base": f"http://127.0.0.1:{sinks.http_port}",
                               "timeout": 5, **kw}
    return TwilioSmsSender(http, **options)


async def test_twilio_send_is_stored_once_per_key_and_reports_delivery_signed(
        sinks: Sinks, http, status_receiver: StatusReceiver):  # noqa: F811
    sender = _twilio(sinks, http)
    sid = await sender.send(to="+905321234567", text="Ödeme hatırlatması", key="k-sms-1",
                            status_callback=status_receiver.url)
    assert sid.startswith("SM") and len(sid) == 34
    # The same notification again (a retry after a crash): the provider drops it, same message.
    assert await sender.send(to="+905321234567", text="Ödeme hatırlatması", key="k-sms-1",
                             status_callback=status_receiver.url) == sid

    [stored] = await sinks.sms()
    assert (stored["to"], stored["text"], stored["message_id"], stored["sid"], stored["from"]) == (
        "+905321234567", "Ödeme hatırlatması", "k-sms-1", sid, "+15005550006")
    assert stored["provider"] == "twilio" and stored["status_callback"] == status_receiver.url

    [(params, signature)] = await wait_for(lambda: status_receiver.statuses(sid), message="the status callback")
    assert (params["MessageStatus"], params["To"], params["AccountSid"]) == (
        "delivered", "+905321234567", TWILIO_ACCOUNT_SID)
    verify_twilio(TWILIO_AUTH_TOKEN, status_receiver.url, params, signature)
    with pytest.raises(SignatureError):
        verify_twilio(TWILIO_AUTH_TOKEN, status_receiver.url, {**params, "MessageStatus": "failed"}, signature)
    with pytest.raises(SignatureError):
        verify_twilio("not-the-token", status_receiver.url, params, signature)
    # The redelivery above did not report twice.
    stored = await wait_for(lambda: _sms_callback_answered(sinks, sid), message="the sink saw the answer")
    assert stored["callback"]["answered"] == 204 and len(await status_receiver.statuses(sid)) == 1


async def _sms_callback_answered(sinks: Sinks, sid: str) -> dict[str, Any] | None:  # noqa: F811
    return next((s for s in await sinks.sms() if s.get("sid") == sid and "answered" in s.get("callback", {})), None)


async def test_twilio_undelivered_is_reported_with_its_error_code(
        sinks: Sinks, http, status_receiver: StatusReceiver):  # noqa: F811
    sid = await _twilio(sinks, http).send(to="+15559990001", text="Son uyarı", key="k-sms-2",
                                          status_callback=status_receiver.url)
    [(params, signature)] = await wait_for(lambda: status_receiver.statuses(sid), message="the status callback")
    assert (params["MessageStatus"], params["ErrorCode"]) == ("undelivered", "30003")
    verify_twilio(TWILIO_AUTH_TOKEN, status_receiver.url, params, signature)


async def test_a_status_callback_is_retried_until_the_receiver_listens(sinks: Sinks, http):  # noqa: F811
    port = free_port()
    url = f"http://127.0.0.1:{port}/v1/webhooks/sms/status"
    sid = await _twilio(sinks, http).send(to="+905321234567", text="x", key="k-late", status_callback=url)

    async def refused_twice() -> bool:
        [record] = [s for s in await sinks.sms() if s["sid"] == sid]
        return record.get("callback", {}).get("attempts", 0) >= 2

    await wait_for(refused_twice, timeout=5, interval=0.02, message="two refused callback attempts")
    received: list[dict[str, str]] = []
    app = FastAPI()

    @app.post("/v1/webhooks/sms/status")
    async def status(request: Request) -> PlainTextResponse:
        params = {k: str(v) for k, v in (await request.form()).items()}
        verify_twilio(TWILIO_AUTH_TOKEN, url, params, request.headers.get("x-twilio-signature"))
        received.append(params)
        return PlainTextResponse("", status_code=204)

    async with serve_in_process(app, port=port):
        async def arrived() -> list[dict[str, str]]:
            return received

        [params] = await wait_for(arrived, timeout=10, message="the retried status callback")
        assert params["MessageSid"] == sid and params["MessageStatus"] == "delivered"


async def test_twilio_refusals_are_classified(sinks: Sinks, http):  # noqa: F811
    invalid = await _refused(_twilio(sinks, http).send(to="+15550001234", text="x", key="k-bad"))
    assert (invalid.permanent, invalid.code) == (True, "twilio_21211")
    not_e164 = await _refused(_twilio(sinks, http).send(to="05321234567", text="x", key="k-bad-2"))
    assert (not_e164.permanent, not_e164.code) == (True, "twilio_21211")
    # Our credentials, not the recipient: worth retrying once an operator has fixed them.
    wrong_token = await _refused(_twilio(sinks, http, auth_token="wrong").send(to="+905321234567", text="x", key="k"))
    assert (wrong_token.permanent, wrong_token.code) == (False, "twilio_20003")
    unreachable = await _refused(_twilio(sinks, http, api_base=f"http://127.0.0.1:{free_port()}").send(
        to="+905321234567", text="x", key="k"))
    assert (unreachable.permanent, unreachable.code) == (False, "sms_transport")
    assert await sinks.sms() == []


async def test_twilio_messaging_service_and_settings_factory(sinks: Sinks, http):  # noqa: F811
    settings = NotifierSettings(
        database_url="postgresql://unused/db", kafka_bootstrap_servers="unused:9092", sms_provider="twilio",
        sms_api_base=f"http://127.0.0.1:{sinks.http_port}", sms_account_sid=TWILIO_ACCOUNT_SID,
        sms_auth_token=TWILIO_AUTH_TOKEN, sms_messaging_service_sid="MG0123456789abcdef0123456789abcdef")
    sender = build_sms_sender(settings, http)
    assert isinstance(sender, TwilioSmsSender)
    sid = await sender.send(to="+905321234567", text="Hatırlatma", key="k-mg")
    [stored] = await sinks.sms()
    assert stored["sid"] == sid and stored["from"] is None
    assert stored["messaging_service_sid"] == "MG0123456789abcdef0123456789abcdef"

    sink = build_sms_sender(settings.model_copy(update={"sms_provider": "sink",
                                                         "sms_url": f"http://127.0.0.1:{sinks.http_port}/sms"}), http)
    assert type(sink) is SmsSender
    assert await sink.send(to="+905329876543", text="JSON", key="k-json", status_callback="ignored") == "2"
    assert [s["message_id"] for s in await sinks.sms()] == ["k-mg", "k-json"]


@pytest.fixture
async def odd_provider() -> AsyncIterator[str]:
    """Answers every POST under /status/<code>/ with that status and a plain-text body."""
    app = FastAPI()

    @app.post("/status/{code}/{rest:path}")
    async def answer(code: int, rest: str) -> PlainTextResponse:
        return PlainTextResponse("not json", status_code=code)

    async with serve_in_process(app) as url:
        yield url


@pytest.mark.parametrize(("status", "outcome"), [
    (201, "accepted"), (400, "permanent"), (404, "permanent"), (408, "transient"), (429, "transient"),
    (500, "transient"), (503, "transient"),
])
async def test_twilio_and_webhook_http_statuses(odd_provider: str, http, status: int, outcome: str):
    twilio = TwilioSmsSender(http, account_sid="AC1", auth_token="t", from_number="+15005550006",
                             api_base=f"{odd_provider}/status/{status}", timeout=5)
    webhook = WebhookSender(http, timeout=5, allow_private_networks=True)
    for send in (twilio.send(to="+905321234567", text="x", key="k-odd"),
                 webhook.send(f"{odd_provider}/status/{status}/hook", "whsec_x", {"a": 1}, "k-odd")):
        if outcome == "accepted":
            assert await send == "k-odd"  # a 2xx without JSON is still accepted: never send it again
        else:
            error = await _refused(send)
            assert error.permanent is (outcome == "permanent")
            assert error.code == f"http_{status}"


# -- webhooks ---------------------------------------------------------------------------------------
async def test_webhook_is_signed_and_its_signature_verifies(sinks: Sinks, http):  # noqa: F811
    payload = {"notification_key": "k-wh-1", "customer_id": "c1", "template": "reminder_overdue",
               "items": [{"number": "INV-1", "open_amount_minor": 125000, "currency": "TRY"}], "note": "Ödeme"}
    base = f"http://127.0.0.1:{sinks.http_port}"
    before = int(time.time())
    sender = WebhookSender(http, timeout=5, allow_private_networks=True)  # the sink is on loopback
    reference = await sender.send(f"{base}/webhooks/erp/acme", "whsec_acme", payload, "k-wh-1")
    assert reference == "wh-1"
    [got] = (await sinks.http.get("/webhooks", params={"path": "erp/acme"})).json()
    headers, body = got["headers"], got["body"].encode("utf-8")
    assert headers["content-type"] == "application/json" and headers["idempotency-key"] == "k-wh-1"
    assert json.loads(body) == payload
    t = verify("whsec_acme", headers["tahsilat-signature"], body, now=int(time.time()))
    assert before <= t <= int(time.time())
    with pytest.raises(SignatureError):
        verify("whsec_other", headers["tahsilat-signature"], body, now=int(time.time()))
    with pytest.raises(SignatureError):
        verify("whsec_acme", headers["tahsilat-signature"], body.replace(b"125000", b"1"), now=int(time.time()))

    # During a secret rotation both signatures go; a receiver that knows only the new one accepts.
    await WebhookSender(http, timeout=5, clock=lambda: 1_773_136_800, allow_private_networks=True).send(
        f"{base}/webhooks/erp/acme", ["whsec_acme", "whsec_acme_2"], payload, "k-wh-2")
    rotated = (await sinks.http.get("/webhooks", params={"since_id": 1})).json()[0]
    assert rotated["headers"]["tahsilat-signature"].count("v1=") == 2
    assert verify("whsec_acme_2", rotated["headers"]["tahsilat-signature"], rotated["body"].encode(),
                  now=1_773_136_800) == 1_773_136_800
    page = await sinks.http.get("/")
    assert page.status_code == 200 and "/webhooks/erp/acme" in page.text


async def test_webhook_410_is_permanent_and_bad_urls_are_refused(sinks: Sinks, http):  # noqa: F811
    sender = WebhookSender(http, timeout=5, allow_private_networks=True)
    gone = await _refused(sender.send(f"http://127.0.0.1:{sinks.http_port}/webhooks/gone", "s", {"a": 1}, "k"))
    assert (gone.permanent, gone.code) == (True, "http_410")
    assert [w["status_code"] for w in (await sinks.http.get("/webhooks")).json()] == [410]
    bad = await _refused(sender.send("ftp://erp.example/hook", "s", {"a": 1}, "k"))
    assert (bad.permanent, bad.code) == (True, "webhook_url")
    unreachable = await _refused(sender.send(f"http://127.0.0.1:{free_port()}/hook", "s", {"a": 1}, "k"))
    assert (unreachable.permanent, unreachable.code) == (False, "webhook_transport")


@pytest.mark.parametrize("url", ["http://127.0.0.1:9/hook", "http://localhost:9/hook", "http://10.0.0.7/hook",
                                 "http://169.254.169.254/latest/meta-data", "http://[::1]:9/hook"])
async def test_a_webhook_that_points_inside_is_refused_before_anything_is_sent(url):
    async with httpx.AsyncClient() as client:
        with pytest.raises(DeliveryError) as refused:
            await WebhookSender(client).send(url, "s" * 20, {"type": "notice"}, "k1")
    assert refused.value.permanent and refused.value.code == "webhook_private"
