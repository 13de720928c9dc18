"""Webhook signatures, both directions. Pure: no I/O, no clock (the caller passes `now`).

Outbound (our webhook channel, Stripe-style): the header

    Tahsilat-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + raw body)>

A receiver recomputes the HMAC over the exact bytes it received and rejects a timestamp outside its
tolerance (a replayed request). While a secret is being rotated the sender signs with the old and
the new one: one `v1=` entry each, and a receiver that knows either accepts.

Inbound (Twilio's status callbacks): `X-Twilio-Signature` is base64(HMAC-SHA1(auth token, the full
URL Twilio called + every POST parameter's name and value, in name order)).
"""
from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit, urlunsplit

SIGNATURE_HEADER = "Tahsilat-Signature"
TWILIO_SIGNATURE_HEADER = "X-Twilio-Signature"
SCHEME = "v1"
DEFAULT_TOLERANCE_SECONDS = 300
MAX_TIMESTAMP = 10**12 - 1  # year 33658: bounds what a header may make us parse


class SignatureError(ValueError):
    """A signature that does not prove the request; `reason` is one of: missing, malformed,
    mismatch, stale, future."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _secrets(secret: str | Iterable[str]) -> list[str]:
    secrets = [secret] if isinstance(secret, str) else list(secret)
    if not secrets or any(not s for s in secrets):
        raise ValueError("a signing secret must be a non-empty string")
    return secrets


def _hmac_hex(secret: str, body: bytes, timestamp: int) -> str:
    return hmac.new(secret.encode("utf-8"), f"{timestamp}.".encode("ascii") + body, hashlib.sha256).hexdigest()


def sign(secret: str | Sequence[str], body: bytes, timestamp: int) -> str:
    """The `Tahsilat-Signature` header value for `body` sent at `timestamp` (unix seconds).
    Several secrets (a rotation in progress) give one `v1=` entry each, in the order given."""
    if isinstance(timestamp, bool) or not isinstance(timestamp, int) or not 0 <= timestamp <= MAX_TIMESTAMP:
        raise ValueError("timestamp must be an int of unix seconds")
    return ",".join([f"t={timestamp}", *(f"{SCHEME}={_hmac_hex(s, body, timestamp)}" for s in _secrets(secret))])


def parse_header(header: str | None) -> tuple[int, list[str]]:
    """(timestamp, v1 signatures) of a header; entries of other schemes are ignored."""
    if header is None or not header.strip():
        raise SignatureError("missing", f"no {SIGNATURE_HEADER} header")
    timestamp: int | None = None
    signatures: list[str] = []
    for item in header.split(","):
        name, sep, value = item.strip().partition("=")
        if not sep or not name or not value:
            raise SignatureError("malformed", f"entry {item.strip()[:40]!r} is not name=value")
        if name == "t":
            digits = value.isascii() and value.isdigit() and len(value) <= len(str(MAX_TIMESTAMP))
            if timestamp is not None or not digits:
                raise SignatureError("malformed", "t must appear once, as unix seconds")
            timestamp = int(value)
        elif name == SCHEME:
            if len(value) != 64 or any(c not in "0123456789abcdef" for c in value.lower()):
                raise SignatureError("malformed", "a v1 signature is 64 hex digits")
            signatures.append(value.lower())
    if timestamp is None:
        raise SignatureError("malformed", "no timestamp (t=)")
    if not signatures:
        raise SignatureError("malformed", f"no {SCHEME}= signature")
    return timestamp, signatures


def verify(secret: str | Sequence[str], header: str | None, body: bytes, now: int,
           tolerance_seconds: int = DEFAULT_TOLERANCE_SECONDS) -> int:
    """Check a `Tahsilat-Signature` header against the raw `body`; returns its timestamp.

    `secret` may be several (the receiver's side of a rotation): any of them signing any `v1=` entry
    proves the request. The signature is checked before the age, so `stale`/`future` are only ever
    reported for an authentic request. Raises SignatureError."""
    timestamp, signatures = parse_header(header)
    expected = [_hmac_hex(s, body, timestamp) for s in _secrets(secret)]
    # Every pair is compared (no early exit) so the time taken says nothing about which came close.
    matched = False
    for candidate in signatures:
        for e in expected:
            matched |= hmac.compare_digest(candidate.encode("ascii"), e.encode("ascii"))
    if not matched:
        raise SignatureError("mismatch", "no signature matches the body and timestamp")
    if timestamp < now - tolerance_seconds:
        raise SignatureError("stale", f"signed {now - timestamp} s ago, tolerance {tolerance_seconds} s")
    if timestamp > now + tolerance_seconds:
        raise SignatureError("future", f"signed {timestamp - now} s ahead, tolerance {tolerance_seconds} s")
    return timestamp


# -- Twilio -----------------------------------------------------------------------------------------
def _twilio_payload(url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    parts = [url]
    for name in sorted(params):
        value = params[name]
        values = [value] if isinstance(value, str) else sorted(value)  # a repeated parameter: each value
        parts.extend(name + v for v in values)
    return "".join(parts)


def twilio_signature(auth_token: str, url: str, params: Mapping[str, str | Sequence[str]]) -> str:
    """Twilio's `X-Twilio-Signature` for a form POST to `url` (the full URL, query string included)."""
    mac = hmac.new(auth_token.encode("utf-8"), _twilio_payload(url, params).encode("utf-8"), hashlib.sha1)
    return base64.b64encode(mac.digest()).decode("ascii")


def _url_variants(url: str) -> list[str]:
    """The URL as given, and with the scheme's default port dropped or added: a proxy in front of
    the receiver may show it either way (Twilio's own validators try both)."""
    variants = [url]
    parts = urlsplit(url)
    default = {"https": 443, "http": 80}.get(parts.scheme)
    if default is None or parts.hostname is None:
        return variants
    try:
        port = parts.port
    except ValueError:
        return variants
    userinfo = parts.netloc.rpartition("@")[0]
    host = parts.netloc.rpartition("@")[2]
    bare = host.rsplit(":", 1)[0] if port is not None else host
    prefix = f"{userinfo}@" if userinfo else ""
    if port is None:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{bare}:{default}")))
    elif port == default:
        variants.append(urlunsplit(parts._replace(netloc=f"{prefix}{bare}")))
    return variants


def verify_twilio(auth_token: str, url: str, params: Mapping[str, str | Sequence[str]],
                  signature: str | None) -> None:
    """Check Twilio's `X-Twilio-Signature` of a form POST to `url`. Raises SignatureError."""
    if not signature or not signature.strip():
        raise SignatureError("missing", f"no {TWILIO_SIGNATURE_HEADER} header")
    if not auth_token:
        raise ValueError("the Twilio auth token must be a non-empty string")
    given = signature.strip().encode("utf-8")
    matched = False
    for candidate in _url_variants(url):
        matched |= hmac.compare_digest(given, twilio_signature(auth_token, candidate, params).encode("ascii"))
    if not matched:
        raise SignatureError("mismatch", "X-Twilio-Signature does not match the URL and parameters")
