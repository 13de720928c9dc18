"""Signed tokens for links a message carries (unsubscribe, the customer portal): a JSON list,
base64url, a dot, and an HMAC-SHA256 of it for one purpose (truncated to 144 bits). The token
names what it opens, so it cannot be pointed at someone else; it is not secret from its holder."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
from typing import Any

MAX_TOKEN = 2000


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _mac(key: bytes, purpose: str, payload: str) -> str:
    return _b64(hmac.new(key, f"{purpose}:{payload}".encode(), hashlib.sha256).digest()[:18])


def sign(key: bytes, purpose: str, fields: list[Any]) -> str:
    payload = _b64(json.dumps(fields, separators=(",", ":"), ensure_ascii=False).encode())
    return f"{payload}.{_mac(key, purpose, payload)}"


def verify(key: bytes, purpose: str, token: str) -> list[Any] | None:
    """The fields of a genuine token for `purpose`, else None (malformed, forged, another key or
    another purpose)."""
    payload, dot, mac = token.partition(".")
    if not dot or len(token) > MAX_TOKEN or not hmac.compare_digest(mac.encode(), _mac(key, purpose, payload).encode()):
        return None
    try:
        fields = json.loads(_unb64(payload))
    except ValueError:
        return None
    return fields if isinstance(fields, list) else None
