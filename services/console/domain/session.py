"""A console session: the key the person signed in with, sealed into a cookie (Fernet:
encrypted and authenticated, with its time of issue), and the form token that guards each POST
against cross-site requests. No store: any console replica with the same secret opens it."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
from dataclasses import asdict, dataclass

from cryptography.fernet import Fernet, InvalidToken

LANGUAGES = ("en", "tr", "cs", "fa")
RTL = frozenset({"fa"})


@dataclass(frozen=True)
class Session:
    key: str  # the API key: every page calls the services with it, so they decide what it may do
    role: str  # admin (a manager) or collector
    name: str  # shown in the header
    language: str
    collector_id: str | None = None
    timezone: str = "UTC"  # the collector's: dates typed on a form are in it
    sid: str = ""  # random per sign-in: the form token is derived from it

    @property
    def manager(self) -> bool:
        return self.role == "admin"


class Sealer:
    """Seals and opens sessions with a key derived from the console's secret."""

    def __init__(self, secret: str, max_age_seconds: float) -> None:
        digest = hashlib.sha256(b"tahsilat-console-session:" + secret.encode()).digest()
        self._fernet = Fernet(base64.urlsafe_b64encode(digest))
        self._form_key = hashlib.sha256(b"tahsilat-console-form:" + secret.encode()).digest()
        self.max_age = max_age_seconds

    def seal(self, session: Session, now: float | None = None) -> str:
        if not session.sid:
            session = Session(**{**asdict(session), "sid": secrets.token_urlsafe(16)})
        data = json.dumps(asdict(session), separators=(",", ":")).encode()
        return (self._fernet.encrypt_at_time(data, int(now)) if now is not None else self._fernet.encrypt(data)).decode()

    def open(self, cookie: str | None, now: float | None = None) -> Session | None:
        """The session, or None when the cookie is missing, forged, tampered with or expired."""
        if not cookie:
            return None
        try:
            ttl = int(self.max_age)
            data = (self._fernet.decrypt_at_time(cookie.encode(), ttl, int(now)) if now is not None
                    else self._fernet.decrypt(cookie.encode(), ttl=ttl))
            fields = json.loads(data)
            session = Session(**fields)
        except (InvalidToken, ValueError, TypeError):
            return None
        return session if session.language in LANGUAGES and session.sid else None

    def form_token(self, session: Session) -> str:
        return hmac.new(self._form_key, session.sid.encode(), hashlib.sha256).hexdigest()[:32]

    def form_token_ok(self, session: Session, given: str | None) -> bool:
        return bool(given) and hmac.compare_digest(self.form_token(session), given)
