"""Delivery providers: SMTP for email, an SMS provider (the local JSON gateway or a Twilio-compatible
API) and signed JSON webhooks to customers' own systems. Every send carries the notification key so a
provider can drop a duplicate if a send is retried after a crash.

A failed send raises DeliveryError. `permanent` says whether sending the same thing again can ever
help (a 550 "no such user", an invalid number, a 410 Gone): retry only when it is False. `code` is a
short machine-readable cause: "smtp_550", "twilio_21211", "http_410", "smtp_connect", ...
"""
from __future__ import annotations

import asyncio
import hashlib
import ipaddress
import json
import socket
import ssl
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime, timezone
from email.header import Header
from email.message import EmailMessage, Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.utils import format_datetime
from typing import TYPE_CHECKING, Any, Literal

import aiosmtplib
import httpx
from pydantic import SecretStr

from services.notifier.adapters.templates import RenderedEmail
from services.notifier.domain.signatures import SIGNATURE_HEADER, sign

if TYPE_CHECKING:
    from services.notifier.settings import NotifierSettings

SmtpTls = Literal["starttls", "tls", "none", "auto"]
DEFAULT_TIMEOUT = 15.0


class DeliveryError(RuntimeError):
    """A send that did not happen. str() is the human-readable reason (what gets recorded)."""

    def __init__(self, message: str, *, permanent: bool = False, code: str = "error") -> None:
        super().__init__(message)
        self.permanent = permanent
        self.code = code

    def __repr__(self) -> str:
        return f"DeliveryError({str(self)!r}, permanent={self.permanent}, code={self.code!r})"


def _secret(value: str | SecretStr | None) -> str | None:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


# -- email ------------------------------------------------------------------------------------------
def _smtp_error(exc: BaseException, where: str) -> DeliveryError:
    """Classify what aiosmtplib raised. Permanent: a 5xx reply to RCPT or DATA (this recipient or this
    message will never be accepted). Everything else can be cured by waiting or by an operator (our
    credentials, our sender address, the server's TLS set-up, the network): transient."""
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused) and exc.recipients:
        exc = exc.recipients[0]  # one recipient per message
    if isinstance(exc, (aiosmtplib.SMTPRecipientRefused, aiosmtplib.SMTPDataError)):
        stage = "RCPT" if isinstance(exc, aiosmtplib.SMTPRecipientRefused) else "DATA"
        return DeliveryError(f"SMTP {where}: {stage} refused: {exc.code} {exc.message}",
                             permanent=500 <= exc.code < 600, code=f"smtp_{exc.code}")
    if isinstance(exc, aiosmtplib.SMTPAuthenticationError):
        return DeliveryError(f"SMTP {where}: authentication refused: {exc.code} {exc.message}",
                             code=f"smtp_{exc.code}")
    if isinstance(exc, aiosmtplib.SMTPSenderRefused):
        return DeliveryError(f"SMTP {where}: sender {exc.sender} refused: {exc.code} {exc.message}",
                             code=f"smtp_{exc.code}")
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return DeliveryError(f"SMTP {where}: {exc.code} {exc.message}", code=f"smtp_{exc.code}")
    if isinstance(exc, ssl.SSLError) or isinstance(exc.__cause__, ssl.SSLError):
        return DeliveryError(f"SMTP {where}: TLS failed: {exc}", code="smtp_tls")
    if isinstance(exc, aiosmtplib.SMTPTimeoutError | TimeoutError):
        return DeliveryError(f"SMTP {where}: timed out: {exc}", code="smtp_timeout")
    if isinstance(exc, aiosmtplib.SMTPConnectError | aiosmtplib.SMTPServerDisconnected | OSError):
        return DeliveryError(f"SMTP {where}: connection failed: {exc}", code="smtp_connect")
    if isinstance(exc, aiosmtplib.SMTPNotSupported) or "STARTTLS" in str(exc):
        return DeliveryError(f"SMTP {where}: {exc}", code="smtp_tls")
    return DeliveryError(f"SMTP {where}: {exc}", code="smtp_error")


class EmailSender:
    """Sends email over a small pool of SMTP connections, each kept for several messages.

    tls: "starttls" (upgrade, and fail if the server cannot), "tls" (implicit TLS from the first byte,
    usually port 465), "none" (plain text), or "auto" (upgrade when the server offers STARTTLS).
    Credentials are only ever sent over TLS, except with an explicit tls="none".

    A connection (its TLS handshake and login done once) carries up to `messages_per_connection`
    messages, at most `max_connections` at once, and is closed after `idle_seconds` unused, well
    inside the 5 minutes a server must wait (RFC 5321 4.5.3.2). A connection that failed in any
    way is closed, never reused. A reused connection the server dropped in the meantime is
    replaced once, at once, as the retry of any failed send would do later."""

    def __init__(self, host: str, port: int, mail_from: str, *, tls: SmtpTls = "auto",
                 username: str | None = None, password: str | SecretStr | None = None,
                 validate_certs: bool = True, ca_file: str | None = None,
                 timeout: float = DEFAULT_TIMEOUT, max_connections: int = 10,
                 messages_per_connection: int = 100, idle_seconds: float = 30.0) -> None:
        if tls not in ("starttls", "tls", "none", "auto"):
            raise ValueError(f"tls must be starttls, tls, none or auto, not {tls!r}")
        if (username is None) != (password is None):
            raise ValueError("an SMTP username and password go together")
        if max_connections < 1 or messages_per_connection < 1:
            raise ValueError("max_connections and messages_per_connection must be at least 1")
        self.host, self.port, self.mail_from = host, port, mail_from
        self.tls, self.username, self._password = tls, username, password
        self.validate_certs, self.ca_file, self.timeout = validate_certs, ca_file, timeout
        self.max_connections, self.messages_per_connection = max_connections, messages_per_connection
        self.idle_seconds = idle_seconds
        self._idle: list[_PooledSmtp] = []  # most recently used last
        self._slots: asyncio.Semaphore | None = None
        self.connections_opened = 0

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def message(self, *, to: str, email: RenderedEmail, language: str, key: str, unsubscribe_url: str,
                at: datetime | None = None) -> Message:
        """The notice as a multipart/alternative message (text and HTML, UTF-8)."""
        headers = {
            "Date": format_datetime((at or datetime.now(timezone.utc)).astimezone(timezone.utc)),  # RFC 5322
            "From": self.mail_from, "To": to, "Subject": email.subject, "Message-ID": message_id(key),
            "List-Unsubscribe": f"<{unsubscribe_url}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Tahsilat-Notification-Key": key, "Content-Language": language,
        }
        if any("\n" in v or "\r" in v for v in headers.values()) or not (to + self.mail_from).isascii():
            return _checked_message(headers, email)
        # The classic (compat32) classes build and flatten in a quarter of the time of EmailMessage,
        # whose header objects were a third of a notice's cost. They neither write a UTF-8 address
        # nor refuse a line break in a header: those go to _checked_message.
        msg = MIMEMultipart("alternative")
        for name, value in headers.items():
            msg[name] = value if value.isascii() else Header(value, "utf-8")
        msg.attach(MIMEText(email.text, "plain", "utf-8"))
        msg.attach(MIMEText(email.html, "html", "utf-8"))
        return msg

    async def send(self, *, to: str, email: RenderedEmail, language: str, key: str, unsubscribe_url: str,
                   at: datetime | None = None) -> str:
        msg = self.message(to=to, email=email, language=language, key=key, unsubscribe_url=unsubscribe_url, at=at)
        await self.send_message(msg)
        return str(msg["Message-ID"])

    async def send_message(self, msg: Message) -> None:
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        async with self._slots:
            pooled = self._take_idle()
            if pooled is not None:
                try:
                    await self._transmit(pooled, msg)
                    return
                except _StaleConnection:
                    pass  # the server closed it while idle; once more on a new one, as a retry would
            await self._transmit(await self._connect(), msg)  # a new one never raises _StaleConnection

    def _take_idle(self) -> _PooledSmtp | None:
        now = time.monotonic()
        while self._idle:
            pooled = self._idle.pop()
            if pooled.client.is_connected and now - pooled.last_used < self.idle_seconds:
                return pooled
            pooled.client.close()
        return None

    async def _transmit(self, pooled: _PooledSmtp, msg: Message) -> None:
        """Send on `pooled`, and put it back for the next message if all went well."""
        client = pooled.client
        try:
            await client.send_message(msg)
        except (aiosmtplib.SMTPServerDisconnected, ConnectionError) as exc:
            client.close()
            if pooled.sent:  # reused: the server dropped it while it was idle
                raise _StaleConnection() from exc
            raise _smtp_error(exc, self.where) from exc
        except (aiosmtplib.SMTPException, OSError) as exc:  # ssl.SSLError and TimeoutError are OSErrors
            await _quit(client)
            raise _smtp_error(exc, self.where) from exc
        except BaseException:
            client.close()
            raise
        pooled.sent += 1
        pooled.last_used = time.monotonic()
        if pooled.sent < self.messages_per_connection and client.is_connected:
            self._idle.append(pooled)
        else:
            await _quit(client)

    async def _connect(self) -> _PooledSmtp:
        client = aiosmtplib.SMTP(
            hostname=self.host, port=self.port, timeout=self.timeout, use_tls=self.tls == "tls",
            start_tls={"starttls": True, "auto": None, "tls": False, "none": False}[self.tls],
            validate_certs=self.validate_certs, cert_bundle=self.ca_file,
        )
        try:
            await client.connect()  # TLS (implicit or STARTTLS) is settled here, before any credential
            self.connections_opened += 1
            if self.username is not None:
                if self.tls != "none" and client.get_transport_info("sslcontext") is None:
                    raise DeliveryError(f"SMTP {self.where}: the server offers no STARTTLS; not sending"
                                        " the password in clear text (set SMTP_TLS=none to allow it)",
                                        code="smtp_tls_required")
                if client.is_ehlo_or_helo_needed:
                    await client.ehlo()
                if not client.supports_extension("auth"):
                    raise DeliveryError(f"SMTP {self.where}: the server offers no AUTH (over this connection)",
                                        code="smtp_auth_unsupported")
                await client.login(self.username, _secret(self._password) or "")
        except DeliveryError:
            await _quit(client)
            raise
        except (aiosmtplib.SMTPException, OSError) as exc:
            await _quit(client)
            raise _smtp_error(exc, self.where) from exc
        except BaseException:
            client.close()
            raise
        return _PooledSmtp(client)

    async def aclose(self) -> None:
        """Say QUIT on every idle connection (the service is stopping)."""
        idle, self._idle = self._idle, []
        await asyncio.gather(*(_quit(p.client) for p in idle))


def _checked_message(headers: dict[str, str], email: RenderedEmail) -> EmailMessage:
    """The message by the modern API, which sends a UTF-8 address with SMTPUTF8 (where the server
    offers it) and refuses a header with a line break in it (ValueError) rather than inject it."""
    msg = EmailMessage()
    for name, value in headers.items():
        if name != "Content-Language":
            msg[name] = value
    msg.set_content(email.text)
    msg.add_alternative(email.html, subtype="html")
    msg["Content-Language"] = headers["Content-Language"]  # after set_content: it drops Content-* headers set before
    return msg


class _StaleConnection(Exception):
    """A reused SMTP connection the server had dropped."""


class _PooledSmtp:
    __slots__ = ("client", "sent", "last_used")

    def __init__(self, client: aiosmtplib.SMTP) -> None:
        self.client, self.sent, self.last_used = client, 0, time.monotonic()


async def _quit(client: aiosmtplib.SMTP) -> None:
    try:
        if client.is_connected:
            await client.quit()
    except (aiosmtplib.SMTPException, OSError):
        pass
    finally:
        client.close()


def message_id(key: str) -> str:
    """The Message-ID of a notification's email: the same on every attempt, so a resend is recognisable."""
    return f"<{hashlib.sha256(key.encode()).hexdigest()[:32]}@tahsilat>"


def build_email_sender(settings: NotifierSettings) -> EmailSender:
    return EmailSender(settings.smtp_host, settings.smtp_port, settings.mail_from, tls=settings.smtp_tls,
                       username=settings.smtp_username, password=settings.smtp_password,
                       validate_certs=settings.smtp_validate_certs, ca_file=settings.smtp_ca_file,
                       max_connections=settings.smtp_max_connections,
                       messages_per_connection=settings.smtp_messages_per_connection,
                       idle_seconds=settings.smtp_idle_seconds)


# -- HTTP helpers -----------------------------------------------------------------------------------
def _http_permanent(status: int) -> bool:
    """A 4xx says this request will never succeed, except 408 (timeout) and 429 (slow down)."""
    return 400 <= status < 500 and status not in (408, 429)


def _accepted_id(response: httpx.Response, field: str, default: str) -> str:
    """The provider's id from a 2xx reply. Accepted is accepted: a reply body we cannot read must not
    make us send the message again."""
    try:
        body = response.json()
    except ValueError:
        return default
    value = body.get(field) if isinstance(body, dict) else None
    return str(value) if value not in (None, "") else default


# -- SMS --------------------------------------------------------------------------------------------
class SmsSender:
    """The local JSON gateway ("sink"): POST {to, text, message_id} to `url`. Also the base type of
    every SMS provider: send(to=, text=, key=, status_callback=) -> the provider's message id."""

    def __init__(self, url: str, client: httpx.AsyncClient, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.url, self.client, self.timeout = url, client, timeout

    async def send(self, *, to: str, text: str, key: str, status_callback: str | None = None) -> str:
        """`status_callback` is ignored: the JSON gateway reports no delivery status."""
        try:
            response = await self.client.post(self.url, json={"to": to, "text": text, "message_id": key},
                                              timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"SMS gateway {self.url}: {exc!r}", code="sms_transport") from exc
        if response.status_code >= 300:
            raise DeliveryError(f"SMS gateway answered {response.status_code}: {response.text[:200]}",
                                permanent=_http_permanent(response.status_code),
                                code=f"http_{response.status_code}")
        return _accepted_id(response, "id", key)


class TwilioSmsSender(SmsSender):
    """A Twilio-compatible Messages API: POST {api_base}/2010-04-01/Accounts/{sid}/Messages.json,
    form-encoded, HTTP basic auth, the notification key as Idempotency-Key. Returns the message sid."""

    def __init__(self, client: httpx.AsyncClient, *, account_sid: str, auth_token: str | SecretStr,
                 from_number: str | None = None, messaging_service_sid: str | None = None,
                 api_base: str = "https://api.twilio.com", timeout: float = DEFAULT_TIMEOUT) -> None:
        if not account_sid or not _secret(auth_token):
            raise ValueError("Twilio needs an account sid and an auth token")
        if not (from_number or messaging_service_sid):
            raise ValueError("Twilio needs a From number or a messaging service sid")
        super().__init__(f"{api_base.rstrip('/')}/2010-04-01/Accounts/{account_sid}/Messages.json", client,
                         timeout=timeout)
        self.account_sid, self._auth_token = account_sid, auth_token
        self.from_number, self.messaging_service_sid = from_number, messaging_service_sid

    async def send(self, *, to: str, text: str, key: str, status_callback: str | None = None) -> str:
        form = {"To": to, "Body": text}
        if self.messaging_service_sid:
            form["MessagingServiceSid"] = self.messaging_service_sid
        else:
            form["From"] = self.from_number or ""
        if status_callback:
            form["StatusCallback"] = status_callback
        try:
            response = await self.client.post(
                self.url, data=form, auth=(self.account_sid, _secret(self._auth_token) or ""),
                headers={"Idempotency-Key": key, "Accept": "application/json"}, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"Twilio {self.url}: {exc!r}", code="sms_transport") from exc
        status = response.status_code
        if 200 <= status < 300:
            return _accepted_id(response, "sid", key)
        code, message = f"http_{status}", response.text[:200]
        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict):
            if isinstance(body.get("code"), int):
                code = f"twilio_{body['code']}"
            message = str(body.get("message") or message)[:200]
        # 401/403 are about our credentials, not the recipient: an operator fixes them, the message can wait.
        permanent = _http_permanent(status) and status not in (401, 403)
        raise DeliveryError(f"Twilio answered {status} ({code}): {message}", permanent=permanent, code=code)


def build_sms_sender(settings: NotifierSettings, http_client: httpx.AsyncClient) -> SmsSender:
    """The SMS provider the settings ask for (SMS_PROVIDER)."""
    if settings.sms_provider == "twilio":
        assert settings.sms_account_sid and settings.sms_auth_token  # the settings validated this
        return TwilioSmsSender(http_client, account_sid=settings.sms_account_sid,
                               auth_token=settings.sms_auth_token, from_number=settings.sms_from,
                               messaging_service_sid=settings.sms_messaging_service_sid,
                               api_base=settings.sms_api_base)
    return SmsSender(settings.sms_url, http_client)


# -- webhooks ---------------------------------------------------------------------------------------
class WebhookSender:
    """POSTs a notice as JSON to a customer's own endpoint, signed (see domain.signatures):

        Tahsilat-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>
        Idempotency-Key: <notification key>

    2xx: accepted. 410 Gone and any other 4xx but 408/429: permanent. Anything else: transient.
    """

    def __init__(self, client: httpx.AsyncClient, *, timeout: float = DEFAULT_TIMEOUT,
                 clock: Callable[[], float] = time.time, allow_private_networks: bool = False) -> None:
        self.client, self.timeout, self.clock = client, timeout, clock
        self.allow_private_networks = allow_private_networks

    @staticmethod
    def body(payload: Mapping[str, Any]) -> bytes:
        return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), default=str).encode("utf-8")

    async def send(self, url: str, secret: str | Sequence[str], payload: Mapping[str, Any], key: str, *,
                   timestamp: int | None = None) -> str:
        """`secret` may be several while it is rotated (one v1= entry each). Returns the receiver's
        `id` if its reply has one, else the key."""
        if not url.startswith(("https://", "http://")):
            raise DeliveryError(f"webhook URL {url[:100]!r} is not http(s)", permanent=True, code="webhook_url")
        if not self.allow_private_networks:
            await refuse_private_destination(url)
        body = self.body(payload)
        t = int(self.clock()) if timestamp is None else timestamp
        headers = {"Content-Type": "application/json", "Idempotency-Key": key,
                   SIGNATURE_HEADER: sign(secret, body, t), "User-Agent": "Tahsilat-Webhooks/1"}
        try:
            response = await self.client.post(url, content=body, headers=headers, timeout=self.timeout)
        except httpx.HTTPError as exc:
            raise DeliveryError(f"webhook {url}: {exc!r}", code="webhook_transport") from exc
        status = response.status_code
        if 200 <= status < 300:
            return _accepted_id(response, "id", key)
        raise DeliveryError(f"webhook {url} answered {status}: {response.text[:200]}",
                            permanent=_http_permanent(status), code=f"http_{status}")


async def refuse_private_destination(url: str) -> None:
    """A customer's endpoint must be on the internet: one that resolves to a loopback, private,
    link-local or otherwise reserved address (the cluster's own services, cloud metadata) is
    refused, permanently, so a webhook URL cannot be used to reach inside."""
    host = httpx.URL(url).host
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise DeliveryError(f"webhook host {host!r} does not resolve: {exc}", code="webhook_dns") from exc
    for info in infos:
        address = ipaddress.ip_address(info[4][0])
        if not address.is_global:
            raise DeliveryError(f"webhook host {host!r} resolves to {address}, which is not a public address",
                                permanent=True, code="webhook_private")
