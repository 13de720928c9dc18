"""Signed ingest records: a billing source signs each record it publishes to the ingest topic
with its ingest secret, so the platform knows which tenant and source wrote it.

Headers on the Kafka record:
  tahsilat-signing-key  the secret's id (says which tenant and source)
  tahsilat-timestamp    Unix seconds when it was signed
  tahsilat-signature    "v1=" + hex HMAC-SHA256(secret, timestamp + "." + the record value's exact bytes)

Pure functions, standard library only, so a producer can copy this file as it is."""
from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Iterable

KEY_HEADER = "tahsilat-signing-key"
TIMESTAMP_HEADER = "tahsilat-timestamp"
SIGNATURE_HEADER = "tahsilat-signature"
VERSION = "v1"


def signature(secret: str, timestamp: int, value: bytes) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + value, hashlib.sha256)
    return f"{VERSION}={mac.hexdigest()}"


def sign(value: bytes, key_id: str, secret: str, timestamp: int | None = None) -> list[tuple[str, bytes]]:
    """The headers to send with `value` (aiokafka: `send(topic, value, key=..., headers=...)`)."""
    ts = int(time.time()) if timestamp is None else timestamp
    return [(KEY_HEADER, key_id.encode()), (TIMESTAMP_HEADER, str(ts).encode()),
            (SIGNATURE_HEADER, signature(secret, ts, value).encode())]


class Signed:
    """What a record's headers claim, before anything is verified."""

    def __init__(self, key_id: str, timestamp: int, signature: str) -> None:
        self.key_id, self.timestamp, self.signature = key_id, timestamp, signature


def claimed(headers: Iterable[tuple[str, bytes]] | None) -> Signed | str:
    """The signature the headers carry, or why there is none to check."""
    found = {}
    for name, raw in headers or ():
        if name in (KEY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER):
            if name in found:
                return f"header {name} appears twice"
            try:
                found[name] = (raw or b"").decode("ascii")
            except UnicodeDecodeError:
                return f"header {name} is not ASCII"
    missing = [h for h in (KEY_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER) if not found.get(h)]
    if missing:
        return f"unsigned: no {', '.join(missing)} header"
    if not found[TIMESTAMP_HEADER].isdigit() or len(found[TIMESTAMP_HEADER]) > 12:
        return f"header {TIMESTAMP_HEADER} is not Unix seconds"
    return Signed(found[KEY_HEADER], int(found[TIMESTAMP_HEADER]), found[SIGNATURE_HEADER])


def matches(secret: str, signed: Signed, value: bytes) -> bool:
    return hmac.compare_digest(signature(secret, signed.timestamp, value), signed.signature)
