"""Structured logging (structlog) that never writes a full email, phone number or secret."""
from __future__ import annotations

import logging
import logging.config
import re
import sys
from typing import Any

import structlog

_EMAIL = re.compile(r"([A-Za-z0-9._%+-])[A-Za-z0-9._%+-]*@([A-Za-z0-9.-]+\.[A-Za-z]{2,})")
_PHONE = re.compile(r"\+\d[\d \-().]{5,}\d")  # E.164-style numbers, the only ones stored
_SECRET_PARTS = ("password", "secret", "api_key", "apikey", "token", "authorization", "x-api-key")
_DSN_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def _is_secret(key: object) -> bool:
    k = str(key).lower()
    return any(part in k for part in _SECRET_PARTS)


def mask_email(value: str) -> str:
    return _EMAIL.sub(lambda m: f"{m.group(1)}***@{m.group(2)}", value)


def mask_phone(value: str) -> str:
    def keep_tail(m: re.Match[str]) -> str:
        digits = re.sub(r"\D", "", m.group(0))
        return "***" + digits[-2:] if len(digits) >= 7 else m.group(0)

    return _PHONE.sub(keep_tail, value)


def redact(value: Any) -> Any:
    if isinstance(value, str):
        return mask_phone(mask_email(_DSN_PASSWORD.sub(r"\1***@", value)))
    if isinstance(value, dict):
        return {k: ("***" if _is_secret(k) else redact(v)) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact(v) for v in value)
    return value


def _redact_processor(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    timestamp = event_dict.pop("timestamp", None)
    out = redact(event_dict)
    if timestamp is not None:
        out["timestamp"] = timestamp
    return out


def _renderer(fmt: str):
    return structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()


def stdlib_logging_config(service: str, fmt: str = "json", library_level: str = "WARNING") -> dict[str, Any]:
    """A logging.config.dictConfig that renders what libraries log through the standard library
    (uvicorn, aiokafka, faust, ...) like our own lines: structured, redacted, one per line."""
    def add_service(_logger: Any, _name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
        event_dict.setdefault("service", service)
        return event_dict

    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {
            "structured": {
                "()": structlog.stdlib.ProcessorFormatter,
                "processors": [structlog.stdlib.ProcessorFormatter.remove_processors_meta, _renderer(fmt)],
                "foreign_pre_chain": [
                    structlog.stdlib.add_log_level,
                    structlog.stdlib.add_logger_name,
                    structlog.processors.TimeStamper(fmt="iso", utc=True),
                    structlog.processors.format_exc_info,
                    add_service,
                    _redact_processor,
                ],
            },
        },
        "handlers": {"stderr": {"class": "logging.StreamHandler", "formatter": "structured",
                                "stream": "ext://sys.stderr"}},
        "root": {"handlers": ["stderr"], "level": library_level},
    }


def configure_logging(service: str, level: str = "info", fmt: str = "json") -> None:
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            _redact_processor,
            _renderer(fmt),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)
    # Libraries log through the standard library: same format, quiet unless warning.
    logging.config.dictConfig(stdlib_logging_config(service, fmt))


def get_logger(name: str | None = None) -> Any:
    return structlog.get_logger(name)
