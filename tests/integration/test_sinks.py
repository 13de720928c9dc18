"""The provider sinks as a real process: SMTP in, SMS in, everything readable back over HTTP."""
from __future__ import annotations

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib
import httpx
import pytest

from tahsilat.embedded import free_port

STARTUP_DEADLINE = 20.0


@dataclass
class Sinks:
    proc: subprocess.Popen
    smtp_port: int
    http: httpx.AsyncClient
    directory: Path


async def _wait_healthy(proc: subprocess.Popen, client: httpx.AsyncClient) -> None:
    deadline = time.monotonic() + STARTUP_DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"sinks exited early with {proc.returncode}: {proc.stderr.read()}")
        try:
            if (await client.get("/health")).json() == {"status": "ok"}:
                return
        except httpx.TransportError:
            pass
        await asyncio.sleep(0.05)
    raise AssertionError(f"sinks not healthy within {STARTUP_DEADLINE}s")


@pytest.fixture
async def sinks(tmp_path: Path) -> AsyncIterator[Sinks]:
    smtp_port, http_port = free_port(), free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "tahsilat.sinks", "--smtp-port", str(smtp_port), "--http-port", str(http_port),
         "--dir", str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{http_port}", timeout=5) as client:
            await _wait_healthy(proc, client)
            yield Sinks(proc, smtp_port, client, tmp_path)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _reminder() -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "Tahsilat <tahsilat@example.com>"
    msg["To"] = "ayse@example.com.tr"
    msg["Subject"] = "Ödeme hatırlatması: INV-2024-001"
    msg["Message-ID"] = "<inv-2024-001.reminder-1@tahsilat.example>"
    msg["List-Unsubscribe"] = "<mailto:unsubscribe@example.com?subject=INV-2024-001>"
    msg["X-Tahsilat-Notification-Key"] = "inv-2024-001:reminder-1:email"
    msg.set_content("Sayın Ayşe Hanım, 1.250,00 ₺ tutarındaki faturanızın vadesi geçti.\n")
    msg.add_alternative("<p>Sayın Ayşe Hanım, <b>1.250,00 ₺</b> tutarındaki faturanızın vadesi geçti.</p>\n",
                        subtype="html")
    msg["Content-Language"] = "tr"  # after set_content: it drops every Content-* header set before it
    return msg


async def test_sinks_capture_email_and_sms_and_stop_on_sigterm(sinks: Sinks) -> None:
    await aiosmtplib.send(_reminder(), hostname="127.0.0.1", port=sinks.smtp_port, start_tls=False)

    reminder = {"to": "+905321234567", "text": "Ödeme hatırlatması", "message_id": "k1"}
    first = await sinks.http.post("/sms", json=reminder)
    again = await sinks.http.post("/sms", json=reminder)
    other = await sinks.http.post("/sms", json={"to": "+905329876543", "text": "Son uyarı", "message_id": "k2"})
    assert first.status_code == again.status_code == other.status_code == 202
    assert first.json() == {"id": 1, "status": "accepted"}
    assert again.json() == {"id": 1, "status": "duplicate"}
    assert other.json() == {"id": 2, "status": "accepted"}
    assert (await sinks.http.post("/sms", json={"text": "no recipient"})).status_code == 422

    emails = (await sinks.http.get("/emails")).json()
    assert len(emails) == 1
    mail = emails[0]
    assert mail["id"] == 1
    assert mail["mail_from"] == "tahsilat@example.com"
    assert mail["rcpt_tos"] == ["ayse@example.com.tr"]
    assert mail["subject"] == "Ödeme hatırlatması: INV-2024-001"
    assert mail["message_id"] == "<inv-2024-001.reminder-1@tahsilat.example>"
    assert mail["headers"]["Content-Language"] == "tr"
    assert mail["headers"]["List-Unsubscribe"] == "<mailto:unsubscribe@example.com?subject=INV-2024-001>"
    assert mail["headers"]["X-Tahsilat-Notification-Key"] == "inv-2024-001:reminder-1:email"
    assert mail["text"] == "Sayın Ayşe Hanım, 1.250,00 ₺ tutarındaki faturanızın vadesi geçti.\n"
    assert "<b>1.250,00 ₺</b>" in mail["html"]
    assert (await sinks.http.get("/emails/1")).json() == mail
    assert (await sinks.http.get("/emails/2")).status_code == 404
    assert (await sinks.http.get("/emails", params={"to": "ayse@example.com.tr"})).json() == [mail]
    assert (await sinks.http.get("/emails", params={"to": "nobody@example.com"})).json() == []
    assert (await sinks.http.get("/emails", params={"since_id": 1})).json() == []
    assert (sinks.directory / "mailbox" / "1.eml").is_file()
    assert b"List-Unsubscribe" in (sinks.directory / "mailbox" / "1.eml").read_bytes()

    sms = (await sinks.http.get("/sms")).json()
    assert [(s["id"], s["to"], s["text"], s["message_id"]) for s in sms] == [
        (1, "+905321234567", "Ödeme hatırlatması", "k1"),
        (2, "+905329876543", "Son uyarı", "k2"),
    ]
    assert [s["id"] for s in (await sinks.http.get("/sms", params={"to": "+905329876543"})).json()] == [2]
    assert len((sinks.directory / "sms.jsonl").read_text(encoding="utf-8").splitlines()) == 2

    page = await sinks.http.get("/")
    assert page.status_code == 200 and "Ödeme hatırlatması" in page.text and "Son uyarı" in page.text

    assert (await sinks.http.delete("/messages")).status_code == 204
    assert (await sinks.http.get("/emails")).json() == [] and (await sinks.http.get("/sms")).json() == []

    sinks.proc.send_signal(signal.SIGTERM)
    out, err = await asyncio.to_thread(sinks.proc.communicate, timeout=5)
    assert sinks.proc.returncode == 0, err
    assert out.startswith("sinks: SMTP on 127.0.0.1:")
