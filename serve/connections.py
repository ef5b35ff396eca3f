"""Timeouts for slow clients, which neither uvicorn (0.54) nor BentoML (1.4.39) has.

uvicorn waits forever for a request's headers (it times out only idle keep-alive connections) and for its body
(BentoML's traffic timeout ends the handler, but a client that keeps trickling still holds the connection). So the
service's workers run uvicorn's own h11 protocol with three additions, for TCP connections (BentoML's internal
ones between its processes are Unix sockets, left alone):

- a request's headers must be complete `header_timeout` seconds after the connection opened, or after the first
  byte of a request on a kept-alive connection;
- its body must be complete `body_timeout` seconds after its headers;
- at most `max_pending` connections may be in either phase at once: one more closes the one that has been at it
  longest. A connection cut off gets a 408 with {"error": ...} when no answer was started, then is closed.

`install(limits)` (serve.service calls it at import, in each worker) points uvicorn's "auto" protocol here, which
BentoML's worker then uses: BentoML passes no protocol or timeout of this kind to uvicorn.Config.
"""
from __future__ import annotations

import asyncio
import json

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from serve.settings import Limits


def _answer(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
            f"connection: close\r\n\r\n").encode() + body


class SlowClientProtocol(H11Protocol):
    """uvicorn's H11Protocol with header and body deadlines and a cap on connections still sending a request."""

    limits = Limits()
    pending: dict[SlowClientProtocol, None] = {}  # in arrival order: the oldest first

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline: asyncio.TimerHandle | None = None
        self.phase = ""
        self.guarded = bool(self.server and self.server[1] is not None)  # TCP, not a Unix socket
        if self.guarded:
            self._start("headers", self.limits.header_timeout)

    def data_received(self, data: bytes) -> None:
        if self.guarded and not self.phase and self.conn.their_state is h11.IDLE:
            self._start("headers", self.limits.header_timeout)  # a new request on a kept-alive connection
        super().data_received(data)
        if self.phase:
            state = self.conn.their_state
            if state is h11.SEND_BODY and self.phase == "headers":
                self._start("body", self.limits.body_timeout)
            elif state is not h11.IDLE and state is not h11.SEND_BODY:
                self._stop()  # the request is in (or the connection is done with)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop()
        super().connection_lost(exc)

    def _start(self, phase: str, seconds: float) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
        if not self.phase:
            self.pending[self] = None
            while len(self.pending) > self.limits.max_pending:
                next(iter(self.pending)).cut_off(f"more than {self.limits.max_pending} connections were still "
                                                 f"sending their request: this one, the oldest, was closed; retry")
        self.phase = phase
        self.deadline = self.loop.call_later(seconds, self.cut_off,
                                             f"the request's {phase} did not arrive within {seconds:g} s")

    def _stop(self) -> None:
        if self.deadline is not None:
            self.deadline.cancel()
            self.deadline = None
        self.phase = ""
        self.pending.pop(self, None)

    def cut_off(self, message: str) -> None:
        """408 (unless this request was answered already) and close; its handler, if any, sees a disconnect."""
        cycle = self.cycle if self.phase == "body" else None  # in the headers phase, a cycle is the last request's
        self._stop()
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True  # the handler's sends are dropped, its receive gets http.disconnect
            cycle.message_event.set()
        if not self.transport.is_closing():
            if cycle is None or not cycle.response_started:
                self.transport.write(_answer(408, "Request Timeout", message))
            self.transport.close()


def install(limits: Limits) -> None:
    """Make uvicorn's default ("auto") HTTP protocol SlowClientProtocol with these limits, in this process."""
    import uvicorn.config

    SlowClientProtocol.limits = limits
    uvicorn.config.HTTP_PROTOCOLS["auto"] = f"{__name__}:SlowClientProtocol"
