"""Signed links a message carries (unsubscribe): the token names the tenant, customer and
channel and carries an HMAC, so it cannot be forged or pointed at someone else."""
from __future__ import annotations

from dataclasses import dataclass

from shared import tokens


@dataclass(frozen=True)
class LinkSubject:
    tenant_id: str
    customer_id: str
    channel: str


def sign_unsubscribe(key: bytes, subject: LinkSubject) -> str:
    return tokens.sign(key, "unsubscribe", [subject.tenant_id, subject.customer_id, subject.channel])


def verify_unsubscribe(key: bytes, token: str) -> LinkSubject | None:
    """The subject of a genuine token, else None (malformed, forged or for another key)."""
    fields = tokens.verify(key, "unsubscribe", token)
    if fields is None or len(fields) != 3:
        return None
    tenant_id, customer_id, channel = fields
    return LinkSubject(str(tenant_id), str(customer_id), str(channel))
