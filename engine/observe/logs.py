"""Structured JSON logs (one orjson object per line) with trace, task and agent ids.

``configure_logging("INFO")`` attaches a JSON handler to the ``engine`` logger (never the
root logger). Fields come from three places, later ones winning: the ambient
:func:`log_context` (``trace_id``, ``task_id``, ``agent_id``, ...), then ``extra={...}`` of
the call. Secrets are redacted from the message and from every field: values of keys that
name a secret (``api_key``, ``token``, ``password``, ``authorization``, ...) and anything
shaped like a key (``sk-...``, ``Bearer ...``, JWTs, GitHub and AWS tokens).

The redaction also stands alone, for applications with their own formatters and pipelines:
:class:`RedactingFilter` is a ``logging.Filter`` (attach it to your handler), and
:func:`redact_event` a structlog processor (put it before the renderer).
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType
from typing import IO, Any, Final

import orjson

__all__ = [
    "JsonFormatter",
    "RedactingFilter",
    "configure_logging",
    "log_context",
    "redact",
    "redact_event",
]

REDACTED: Final = "[REDACTED]"

_SECRET_KEY: Final = re.compile(
    r"(?i)(api[_-]?key|apikey|token|secret|password|passwd|authorization|auth|credential|"
    r"private[_-]?key|cookie|session[_-]?id)"
)
_SECRET_VALUES: Final = [
    # key=value / key: value pairs naming a secret: keep the key, drop the value
    re.compile(
        r"(?i)\b((?:[a-z0-9_]*?)(?:api[_-]?key|apikey|token|secret|password|passwd))"
        r"(\s*[=:]\s*)(\"[^\"]*\"|'[^']*'|[^\s,;&]+)"
    ),
    re.compile(r"(?i)\b(authorization)(\s*[=:]\s*)((?:bearer|basic|token)\s+)?[^\s,;&]+"),
    re.compile(r"(?i)\b(bearer)(\s+)[A-Za-z0-9._~+/=-]{8,}"),
]
_SECRET_TOKENS: Final = re.compile(
    r"\bsk-[A-Za-z0-9_-]{16,}"  # OpenAI-style keys
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|\bAKIA[0-9A-Z]{16}\b"  # AWS access key ids
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}"  # JWTs
    r"|\bxox[abprs]-[A-Za-z0-9-]{10,}"  # Slack tokens
)

_EMPTY: Final[Mapping[str, Any]] = MappingProxyType({})
_context: contextvars.ContextVar[Mapping[str, Any]] = contextvars.ContextVar(
    "engine_log_context", default=_EMPTY
)

# Attributes every LogRecord has; anything else came from ``extra=``.
_STANDARD: Final = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message", "asctime", "taskName",
}  # fmt: skip


def redact(text: str) -> str:
    """``text`` with anything that looks like a credential replaced by ``[REDACTED]``."""
    for pattern in _SECRET_VALUES:
        text = pattern.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
    return _SECRET_TOKENS.sub(REDACTED, text)


def _clean(key: str, value: Any) -> Any:
    if _SECRET_KEY.search(key):
        return REDACTED
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, Mapping):
        return {str(k): _clean(str(k), v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(key, v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return redact(str(value))


class RedactingFilter(logging.Filter):
    """Redacts secrets from each record in place, for any formatter: the message (its
    arguments merged in), fields given with ``extra=``, the exception and stack text.

    Attach it to a handler (``handler.addFilter(RedactingFilter())``) to cover every record
    that handler writes; a logger's own filters do not see records of its child loggers.
    It never drops a record.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message or record.args:
            record.msg, record.args = clean, None
        for key, value in list(vars(record).items()):
            if key not in _STANDARD and not key.startswith("_"):
                setattr(record, key, _clean(key, value))
        if record.exc_info and not record.exc_text:  # formatters use exc_text when set
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def redact_event(logger: Any, method_name: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    """A structlog processor: secrets redacted from the event and every field
    (``structlog.configure(processors=[..., redact_event, JSONRenderer()])``)."""
    return {k: _clean(k, v) for k, v in event_dict.items()}


@contextmanager
def log_context(**fields: Any) -> Iterator[None]:
    """Add fields (``trace_id=``, ``task_id=``, ``agent_id=``, ...) to every log line inside."""
    token = _context.set({**_context.get(), **fields})
    try:
        yield
    finally:
        _context.reset(token)


class JsonFormatter(logging.Formatter):
    """Formats a record as one JSON object: ts, level, logger, msg, context and extra fields."""

    def __init__(self, *, redact_secrets: bool = True) -> None:
        super().__init__()
        self.redact_secrets = redact_secrets

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        out.update(_context.get())
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        if self.redact_secrets:
            keep = ("ts", "level", "logger")
            out = {k: (v if k in keep else _clean(k, v)) for k, v in out.items()}
        return orjson.dumps(out, default=str).decode()


def configure_logging(
    level: int | str = "INFO",
    *,
    stream: IO[str] | None = None,
    logger: str = "engine",
    redact_secrets: bool = True,
) -> logging.Handler:
    """Send ``logger`` (default ``engine``) records at ``level`` and above as JSON lines.

    Replaces a handler installed by an earlier call, so calling it twice does not duplicate
    lines; returns the handler.
    """
    if isinstance(level, str):
        name = level.upper()
        if name not in logging.getLevelNamesMapping():
            raise ValueError(f"unknown log level {level!r}")
        level = logging.getLevelNamesMapping()[name]
    log = logging.getLogger(logger)
    for h in list(log.handlers):
        if getattr(h, "_engine_json", False):
            log.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter(redact_secrets=redact_secrets))
    handler._engine_json = True  # type: ignore[attr-defined]
    log.addHandler(handler)
    log.setLevel(level)
    return handler
