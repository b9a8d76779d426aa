"""Structured JSON logs: context fields, levels, redaction."""

from __future__ import annotations

import io
import logging

import orjson
import pytest

from engine.observe.logs import REDACTED, configure_logging, log_context, redact


@pytest.fixture
def stream() -> io.StringIO:
    s = io.StringIO()
    handler = configure_logging("INFO", stream=s)
    yield s
    logging.getLogger("engine").removeHandler(handler)


def lines(s: io.StringIO) -> list[dict[str, object]]:
    return [orjson.loads(x) for x in s.getvalue().splitlines()]


def test_json_lines_with_context_and_extra(stream: io.StringIO) -> None:
    log = logging.getLogger("engine.runtime")
    with log_context(trace_id="t1", agent_id="echo/a"), log_context(task_id="k9"):
        log.info("handled %d", 3, extra={"elapsed_ms": 1.5})
    log.info("outside")
    first, second = lines(stream)
    assert first["msg"] == "handled 3" and first["level"] == "info"
    assert first["logger"] == "engine.runtime"
    assert (first["trace_id"], first["task_id"], first["agent_id"]) == ("t1", "k9", "echo/a")
    assert first["elapsed_ms"] == 1.5
    assert str(first["ts"]).endswith("Z")
    assert "trace_id" not in second


def test_level_filters(stream: io.StringIO) -> None:
    configure_logging("warning", stream=stream)
    logging.getLogger("engine.x").info("hidden")
    logging.getLogger("engine.x").warning("shown")
    assert [x["msg"] for x in lines(stream)] == ["shown"]


def test_reconfigure_does_not_duplicate(stream: io.StringIO) -> None:
    configure_logging("INFO", stream=stream)
    logging.getLogger("engine").info("once")
    assert len(lines(stream)) == 1
    assert sum(getattr(h, "_engine_json", False) for h in logging.getLogger("engine").handlers) == 1


def test_unknown_level() -> None:
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("LOUD")


def test_exception_is_logged(stream: io.StringIO) -> None:
    try:
        raise RuntimeError("bad thing")
    except RuntimeError:
        logging.getLogger("engine").exception("failed")
    (rec,) = lines(stream)
    assert "RuntimeError: bad thing" in str(rec["exc"])


SECRETS = [
    "sk-proj-abcdefghijklmnopqrstuvwx",
    "ghp_abcdefghijklmnopqrstuvwxyz0123",
    "AKIAABCDEFGHIJKLMNOP",
    "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.dozjgNryP4J3jVmNHl0w5N",
]


@pytest.mark.parametrize("secret", SECRETS)
def test_token_shapes_redacted(secret: str, stream: io.StringIO) -> None:
    logging.getLogger("engine").warning("calling with %s now", secret)
    (rec,) = lines(stream)
    assert secret not in stream.getvalue()
    assert REDACTED in str(rec["msg"]) and str(rec["msg"]).startswith("calling with")


def test_key_value_and_headers_redacted() -> None:
    text = redact(
        "api_key=abc123 token: 'xyz' Authorization: Bearer abcdefghijk password=hunter2 n=5"
    )
    for s in ("abc123", "xyz", "abcdefghijk", "hunter2"):
        assert s not in text
    assert "api_key=" in text and "n=5" in text


def test_secret_fields_redacted(stream: io.StringIO) -> None:
    logging.getLogger("engine").info(
        "cfg",
        extra={
            "api_key": "plain",
            "headers": {"Authorization": "x", "Accept": "json"},
            "note": "key sk-abcdefghijklmnopqrstuv",
        },
    )
    (rec,) = lines(stream)
    assert rec["api_key"] == REDACTED
    assert rec["headers"] == {"Authorization": REDACTED, "Accept": "json"}
    assert "sk-abc" not in str(rec["note"])


def test_redaction_can_be_disabled() -> None:
    s = io.StringIO()
    handler = configure_logging("INFO", stream=s, redact_secrets=False)
    try:
        logging.getLogger("engine").info("k=%s", "sk-abcdefghijklmnopqrstuv")
    finally:
        logging.getLogger("engine").removeHandler(handler)
    assert "sk-abcdefghijklmnopqrstuv" in s.getvalue()


def test_filter_redacts_for_the_applications_own_formatter() -> None:
    """A plain-text handler of the application's, with the engine's filter attached."""
    from engine.observe.logs import RedactingFilter

    s = io.StringIO()
    handler = logging.StreamHandler(s)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s user=%(user)s"))
    handler.addFilter(RedactingFilter())
    log = logging.getLogger("myapp.billing")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("retry with %s", "sk-abcdefghijklmnopqrstuv", extra={"user": "token=abc12"})
        try:
            raise ValueError("password=hunter2 rejected")
        except ValueError:
            log.exception("failed", extra={"user": "u"})
    finally:
        log.removeHandler(handler)
        log.propagate = True
    out = s.getvalue()
    for secret in ("sk-abcdefghijklmnopqrstuv", "abc12", "hunter2"):
        assert secret not in out
    assert out.startswith(f"WARNING retry with {REDACTED} user=token={REDACTED}\n")
    assert "ValueError: password=" in out and "Traceback" in out


def test_structlog_processor_redacts_events() -> None:
    structlog = pytest.importorskip("structlog")
    from engine.observe.logs import redact_event

    out = io.StringIO()
    logger = structlog.wrap_logger(
        structlog.PrintLogger(out),
        processors=[redact_event, structlog.processors.JSONRenderer()],
    )
    logger.info("login with Bearer abcdefghijklmnop", api_key="plain", attempt=2)
    rec = orjson.loads(out.getvalue())
    assert rec == {"event": f"login with Bearer {REDACTED}", "api_key": REDACTED, "attempt": 2}
