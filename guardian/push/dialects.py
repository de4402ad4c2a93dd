"""How each kind of receiver is spoken to: where the POST goes, its JSON body, and what its answer says
when it refuses.

- `webhook`: `{"event", "account", "bot", "text", "time", "count"}` to the configured `url`.
- `slack`: an incoming webhook's `{"text": ...}` to its `url`.
- `telegram`: `{"chat_id", "text"}` to `<api_url>/bot<bot_token>/sendMessage`.

The URLs hold secrets (a Slack webhook's path, Telegram's token), so nothing here puts a URL into a
message, and `refusal` strips the notifier's secrets from whatever the receiver answered.
"""

from __future__ import annotations

import json
from typing import Any, Final

from guardian import logs
from guardian.config import NotifyConfig
from guardian.kraken.times import to_iso
from guardian.push.messages import Note

MAX_REASON_CHARS: Final = 120


def request(config: NotifyConfig, note: Note, text: str, count: int) -> tuple[str, dict[str, Any]]:
    """The URL to POST to and the JSON body, in `config.kind`'s dialect."""
    if config.kind == "telegram":
        assert config.bot_token is not None and config.chat_id is not None  # the config's checks
        url = f"{config.api_url}/bot{config.bot_token.reveal()}/sendMessage"
        return url, {"chat_id": config.chat_id, "text": text}
    assert config.url is not None
    if config.kind == "slack":
        return config.url.reveal(), {"text": text}
    return config.url.reveal(), {
        "event": note.event,
        "account": note.account,
        "bot": note.bot,
        "text": text,
        "time": to_iso(note.at),
        "count": count,
    }


def retry_after(config: NotifyConfig, body: bytes) -> float | None:
    """Telegram says how long to wait in its answer (`parameters.retry_after`), not in a header."""
    if config.kind != "telegram":
        return None
    try:
        doc = json.loads(body[:2048])
    except ValueError:
        return None
    parameters = doc.get("parameters") if isinstance(doc, dict) else None
    wait = parameters.get("retry_after") if isinstance(parameters, dict) else None
    return float(wait) if isinstance(wait, int | float) and wait >= 0 else None


def refusal(config: NotifyConfig, status: int, body: bytes) -> str:
    """A refused delivery in a few words: the status, and the receiver's own reason where its dialect has
    one (Telegram's `description`, Slack's plain-text answer), without the notifier's secrets."""
    reason = ""
    text = body[:2048].decode("utf-8", "replace")
    if config.kind == "telegram":
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if isinstance(doc, dict) and isinstance(doc.get("description"), str):
            reason = doc["description"]
    elif config.kind == "slack" and text and not text.lstrip().startswith("<"):
        reason = text
    for secret in config.secrets():
        reason = reason.replace(secret.reveal(), logs.MASK)
    reason = logs.REDACTOR.scrub(" ".join(reason.split()))[:MAX_REASON_CHARS]
    return f"HTTP {status}" + (f": {reason}" if reason else "")
