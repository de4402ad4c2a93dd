"""Fault injection for the simulator: what a broken exchange or network does to a request.

A fault applies to one endpoint (by its name in the endpoint table) or to all (`*`), optionally only
for the next `times` requests. Kinds:

- `latency`: answer normally, `latency_s` seconds late;
- `error`: answer Kraken's error envelope with `code` (HTTP `status`, default 200);
- `status`: answer HTTP `status` (a 5xx usually) with a non-JSON body;
- `hang`: never answer (until the fault is cleared or the simulator stops);
- `drop`: close the connection without answering;
- `lose`: act on the request (the order is placed), then never answer: the answer is lost on its way;
- `stall` (endpoint `ws`, the WebSocket `/ws/v1`, and only there): every connection, and any new one, goes
  silent both ways while the fault is set: nothing is sent (no message, no heartbeat), no ping is answered,
  no request is acted on, and the TCP connection stays open. Clearing the fault resumes them and delivers
  what was held.

The clock offset (what the exchange reports as its time) is kept by the exchange itself.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Final

FAULT_KINDS = ("latency", "error", "status", "hang", "drop", "lose", "stall")
WS_ENDPOINT: Final = "ws"  # the WebSocket, for the `stall` fault


@dataclass(slots=True)
class Fault:
    endpoint: str
    kind: str
    latency_s: float = 0.0
    code: str = "Unavailable"
    status: int = 200
    times: int | None = None  # None: until cleared

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise ValueError(f"kind must be one of {', '.join(FAULT_KINDS)}")
        if (self.kind == "stall") != (self.endpoint == WS_ENDPOINT):
            raise ValueError(
                f'the WebSocket takes one fault, a stall: endpoint "{WS_ENDPOINT}", kind "stall"'
            )
        if self.kind == "stall" and self.times is not None:
            raise ValueError("a stall lasts until it is cleared: no times")
        if self.latency_s < 0 or self.latency_s > 3600:
            raise ValueError("latency_s must be between 0 and 3600")
        if not 100 <= self.status <= 599:
            raise ValueError("status must be an HTTP status code")
        if self.kind == "status" and self.status < 400:
            self.status = 503
        if self.times is not None and self.times < 1:
            raise ValueError("times must be at least 1")

    @classmethod
    def from_json(cls, doc: Any) -> Fault:
        if not isinstance(doc, dict):
            raise ValueError("a fault is a JSON object")
        allowed = {"endpoint", "kind", "latency_s", "code", "status", "times"}
        unknown = set(doc) - allowed
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        try:
            return cls(
                endpoint=str(doc.get("endpoint", "*")),
                kind=str(doc["kind"]),
                latency_s=float(doc.get("latency_s", 0.0)),
                code=str(doc.get("code", "Unavailable")),
                status=int(doc.get("status", 200)),
                times=None if doc.get("times") is None else int(doc["times"]),
            )
        except KeyError:
            raise ValueError("a fault needs a kind") from None
        except (TypeError, ValueError) as exc:
            raise ValueError(f"bad fault field: {exc}") from None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


class FaultTable:
    """The active faults; the first that matches a request is used (and consumed if counted)."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._watchers: list[Callable[[], None]] = []

    def watch(self, changed: Callable[[], None]) -> None:
        """Call `changed` after every add and clear (the WebSocket server follows its stall this way)."""
        self._watchers.append(changed)

    def add(self, fault: Fault) -> None:
        self._faults.append(fault)
        self._changed()

    def clear(self, endpoint: str | None = None) -> None:
        if endpoint is None:
            self._faults.clear()
        else:
            self._faults = [f for f in self._faults if f.endpoint != endpoint]
        self._changed()

    def _changed(self) -> None:
        for changed in self._watchers:
            changed()

    @property
    def ws_stalled(self) -> bool:
        return any(f.kind == "stall" for f in self._faults)

    def take(self, endpoint: str) -> Fault | None:
        for fault in self._faults:
            if fault.kind == "stall":  # the WebSocket's: no HTTP request takes it
                continue
            if fault.endpoint in (endpoint, "*"):
                if fault.times is not None:
                    fault.times -= 1
                    if fault.times <= 0:
                        self._faults.remove(fault)
                return fault
        return None

    def snapshot(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self._faults]
