"""structlog, configured once at startup: JSON in production, console on a terminal, secrets redacted.

Redaction works two ways: by field name (anything that looks like a key, secret, token or signature)
and by value (every secret the process loaded is registered, and any string containing one is masked,
wherever it appears, exception text included). Tracebacks are rendered without local variables.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterable
from typing import Any, TextIO

import structlog
from structlog.types import EventDict, Processor, WrappedLogger

from guardian.secret import Secret

MASK = "***"
SENSITIVE_NAME = re.compile(r"secret|password|passwd|token|authent|signature|api_?key|credential", re.I)
LEVELS = ("debug", "info", "warning", "error", "critical")
FORMATS = ("auto", "json", "console")


class Redactor:
    """A structlog processor that masks secrets by field name and by value."""

    def __init__(self) -> None:
        self._values: set[str] = set()

    def register(self, values: Iterable[str | Secret]) -> None:
        for value in values:
            text = value.reveal() if isinstance(value, Secret) else value
            if text and len(text) >= 6:  # too short to mask without masking ordinary words
                self._values.add(text)

    def scrub(self, text: str) -> str:
        for value in self._values:
            if value in text:
                text = text.replace(value, MASK)
        return text

    def clean(self, value: Any, depth: int = 0) -> Any:
        if isinstance(value, Secret):
            return MASK
        if isinstance(value, str):
            return self.scrub(value)
        if depth > 6:
            return value
        if isinstance(value, dict):
            return {
                k: (MASK if isinstance(k, str) and SENSITIVE_NAME.search(k) else self.clean(v, depth + 1))
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return type(value)(self.clean(v, depth + 1) for v in value)
        return value

    def __call__(self, logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
        for key in list(event_dict):
            if SENSITIVE_NAME.search(key) and key not in ("api_key_name",):
                event_dict[key] = MASK
            else:
                event_dict[key] = self.clean(event_dict[key])
        return event_dict


REDACTOR = Redactor()


def _scrub_rendered(logger: WrappedLogger, name: str, event_dict: EventDict) -> EventDict:
    """After the exception has been rendered (to text or to a structure): mask registered values in it."""
    if "exception" in event_dict:
        event_dict["exception"] = REDACTOR.clean(event_dict["exception"])
    return event_dict


debugging = False  # the level is debug: worth the cost of measuring what only debug lines show


def configure(level: str = "info", fmt: str = "auto", stream: TextIO | None = None) -> None:
    """Set up structlog for the whole process. Safe to call again (tests do)."""
    global debugging
    if level not in LEVELS:
        raise ValueError(f"log level must be one of {', '.join(LEVELS)}")
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}")
    out = stream or sys.stderr
    console = fmt == "console" or (fmt == "auto" and out.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        REDACTOR,
    ]
    processors: list[Processor]
    if console:
        # Exceptions become plain text (no locals) before the scrub, so the renderer never sees a secret.
        processors = [
            *shared,
            structlog.processors.format_exc_info,
            _scrub_rendered,
            structlog.dev.ConsoleRenderer(colors=out.isatty()),
        ]
    else:
        transformer = structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
        processors = [
            *shared,
            structlog.processors.ExceptionRenderer(transformer),
            _scrub_rendered,
            structlog.processors.JSONRenderer(default=_json_default),
        ]
    debugging = level == "debug"
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(getattr(logging, level.upper())),
        logger_factory=structlog.PrintLoggerFactory(file=out),
        cache_logger_on_first_use=False,
    )


def _json_default(value: object) -> str:
    return MASK if isinstance(value, Secret) else REDACTOR.scrub(str(value))


def context(**values: Any) -> None:
    """Bind fields to every log line of the current task (request id, account, bot)."""
    structlog.contextvars.bind_contextvars(**values)
