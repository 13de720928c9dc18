"""Signed links a message carries (unsubscribe): the token names the tenant, customer and
channel and carries an HMAC, so it cannot be forged or pointed at someone else."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkSubject:
    tenant_id: str
    customer_id: str
    channel: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, payload: str) -> str:
    return _b64(hmac.new(key, b"unsubscribe:" + payload.encode(), hashlib.sha256).digest()[:18])


def sign_unsubscribe(key: bytes, subject: LinkSubject) -> str:
    payload = _b64(json.dumps([subject.tenant_id, subject.customer_id, subject.channel],
                              separators=(",", ":"), ensure_ascii=False).encode())
    return f"{payload}.{_mac(key, payload)}"


def verify_unsubscribe(key: bytes, token: str) -> LinkSubject | None:
    """The subject of a genuine token, else None (malformed, forged or for another key)."""
    payload, dot, mac = token.partition(".")
    if not dot or len(token) > 2000 or not hmac.compare_digest(mac, _mac(key, payload)):
        return None
    try:
        tenant_id, customer_id, channel = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    return LinkSubject(str(tenant_id), str(customer_id), str(channel))
