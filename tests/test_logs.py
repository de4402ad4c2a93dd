"""Log output is structured and never carries a secret: by field name, by value, or in a traceback."""

from __future__ import annotations

import io
import json

import pytest
import structlog

from guardian import logs
from guardian.secret import ApiSecret, Secret

SECRET_VALUE = "c2VjcmV0LXZhbHVlLXRoYXQtbXVzdC1uZXZlci1sZWFr"


@pytest.fixture
def out() -> io.StringIO:
    stream = io.StringIO()
    logs.configure("debug", "json", stream)
    logs.REDACTOR.register([ApiSecret(SECRET_VALUE)])
    return stream


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_with_level_timestamp_and_context(out: io.StringIO) -> None:
    structlog.contextvars.clear_contextvars()
    logs.context(account="main")
    structlog.get_logger("t").info("switch_armed", remaining_s=59.5)
    structlog.contextvars.clear_contextvars()
    (line,) = lines(out)
    assert line["event"] == "switch_armed"
    assert line["level"] == "info"
    assert line["account"] == "main"
    assert line["remaining_s"] == 59.5
    assert str(line["timestamp"]).endswith("Z")


def test_sensitive_field_names_are_masked(out: io.StringIO) -> None:
    structlog.get_logger("t").info(
        "config", api_secret="x" * 10, admin_token="y" * 10, Authent="z" * 10, nested={"password": "p" * 8}
    )
    (line,) = lines(out)
    assert line["api_secret"] == line["admin_token"] == line["Authent"] == "***"
    assert line["nested"] == {"password": "***"}


def test_registered_secret_values_are_masked_anywhere(out: io.StringIO) -> None:
    log = structlog.get_logger("t")
    log.warning(f"oops {SECRET_VALUE}", detail=[f"a{SECRET_VALUE}b"], obj=Secret("whatever-secret"))
    try:
        leaked = SECRET_VALUE  # a local variable holding the secret: locals must not be rendered
        raise RuntimeError(f"failed with {leaked}")
    except RuntimeError:
        log.exception("crash")
    text = out.getvalue()
    assert SECRET_VALUE not in text
    assert "whatever-secret" not in text
    first, second = lines(out)
    assert first["event"] == "oops ***"
    assert first["detail"] == ["a***b"]
    assert first["obj"] == "***"
    assert "failed with ***" in json.dumps(second["exception"])
    assert "locals" not in json.dumps(second["exception"])


def test_console_format_also_redacts() -> None:
    stream = io.StringIO()
    logs.configure("info", "console", stream)
    logs.REDACTOR.register([SECRET_VALUE])
    try:
        raise ValueError(SECRET_VALUE)
    except ValueError:
        structlog.get_logger("t").exception("boom", api_key="k" * 10)
    assert SECRET_VALUE not in stream.getvalue()
    assert "boom" in stream.getvalue()


def test_level_filters_and_bad_settings_are_refused() -> None:
    stream = io.StringIO()
    logs.configure("warning", "json", stream)
    structlog.get_logger("t").info("quiet")
    structlog.get_logger("t").warning("loud")
    assert [line["event"] for line in lines(stream)] == ["loud"]
    with pytest.raises(ValueError, match="log level"):
        logs.configure("verbose", "json")
    with pytest.raises(ValueError, match="log format"):
        logs.configure("info", "xml")
