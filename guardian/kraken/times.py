"""Kraken's timestamps: ISO 8601 in UTC with a `Z`, with or without milliseconds."""

from __future__ import annotations

from datetime import UTC, datetime


def to_iso(epoch_s: float) -> str:
    """`2026-11-21T10:00:00.123Z`: the form Kraken sends in serverTime and the switch's answers."""
    moment = datetime.fromtimestamp(epoch_s, tz=UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def parse_iso(text: str) -> float:
    """Epoch seconds from an ISO 8601 timestamp (`Z` or an offset; fraction optional).

    A timestamp without a zone is read as UTC, which is what Kraken means. Raises ValueError on anything
    that is not a timestamp.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("not a timestamp")
    moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
