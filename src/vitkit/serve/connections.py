"""Connection limits for ``vitkit serve``: uvicorn's HTTP/1.1 protocol (h11) with what it lacks.

uvicorn (0.55) has a keep-alive timeout and a cap on the size of a request header (h11's 16 KB), but
no time limit on a request header and no cap on open connections (``limit_concurrency`` answers 503
to *requests* and counts idle connections, so a thousand idle sockets would turn ``/health`` into a
503 too). A thousand clients that send half a header therefore hold a thousand file descriptors
forever; past the process's open-file limit ``accept()`` fails, and asyncio logs each failure with
its traceback, thousands a second. :func:`uvicorn_config` closes both gaps:

- a request header must arrive whole within ``header_timeout_s`` (answered 408, then closed);
- at most ``max_connections`` are open: a new connection over the cap closes the connection that
  has been idle longest (waiting for a header, or kept alive between requests), as nginx reuses its
  idle keep-alive connections; when every connection is busy with a request, it gets a 503 and is
  closed (a client that has sent its request by then may see the connection reset instead);
- ``accept()`` takes at most :data:`ACCEPT_BATCH` connections per turn of the event loop, so the
  connections accepted before the cap applies stay below the open-file limit
  (:func:`connection_cap` keeps the room they need).

Nothing is logged per connection: closing idle sockets is the normal course of a server.
"""

from __future__ import annotations

import contextlib
import json
import resource
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

#: the listen backlog, which asyncio also uses as the number of connections accepted per turn of
#: the event loop (uvicorn's default is 2,048: the whole burst, before any of them can be refused)
ACCEPT_BATCH = 64
#: open files the process needs besides connections (libraries, the model, logs), measured ~40
_OWN_FILES = 64
#: connections a server may have accepted and not yet counted: a few turns of the event loop
_UNCOUNTED = 3 * ACCEPT_BATCH
DEFAULT_MAX_CONNECTIONS = 512


def open_file_limit() -> int:
    """The process's soft limit on open files (``ulimit -n``)."""
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def connection_cap(requested: int | None) -> int:
    """The cap on open connections: ``requested``, or by default :data:`DEFAULT_MAX_CONNECTIONS`
    lowered to what the open-file limit leaves room for. Raises ``ValueError`` if ``requested``
    (or, by default, any useful cap) does not fit under the limit."""
    limit = open_file_limit()
    room = limit - _OWN_FILES - _UNCOUNTED
    if requested is None:
        requested = min(DEFAULT_MAX_CONNECTIONS, room)
        if requested < 16:
            raise ValueError(
                f"the open-file limit (ulimit -n) is {limit}, too low to serve: raise it to at least "
                f"{16 + _OWN_FILES + _UNCOUNTED}"
            )
    elif requested < 1:
        raise ValueError(f"--max-connections must be at least 1, got {requested}")
    elif requested > room:
        raise ValueError(
            f"--max-connections {requested} does not fit under the open-file limit (ulimit -n) of {limit}, "
            f"which leaves room for {room}: lower --max-connections or raise the limit to at least "
            f"{requested + _OWN_FILES + _UNCOUNTED}"
        )
    return requested


def _raw_response(status: int, reason: str, message: str) -> bytes:
    body = json.dumps({"error": message}).encode()
    head = (
        f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode() + body


class _LimitedH11(H11Protocol):
    """uvicorn's h11 protocol with a header timeout and a cap on open connections (the class
    attributes, set by :func:`uvicorn_config`)."""

    max_connections: int
    header_timeout_s: float

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._idle_since = self.loop.time()
        self._header_timer: Any = None
        if len(self.connections) > self.max_connections and not self._close_longest_idle():
            message = f"the server has {self.max_connections} connections open, all busy (--max-connections)"
            transport.write(_raw_response(503, "Service Unavailable", message))
            transport.close()
            return
        self._start_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        # the first bytes of a request on a kept-alive connection: its header is now on the clock
        if self._header_timer is None and not self._busy():
            self._start_header_timer()
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        if self._busy():  # a whole header came: the request is the app's (and UploadLimits') now
            self._stop_header_timer()

    def on_response_complete(self) -> None:
        self._idle_since = self.loop.time()
        super().on_response_complete()

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _start_header_timer(self) -> None:
        self._stop_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timed_out)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timed_out(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing() and not self._busy():
            message = f"the request header did not arrive within {self.header_timeout_s:g} s"
            self.transport.write(_raw_response(408, "Request Timeout", message))
            self._close()

    def _close(self) -> None:
        with contextlib.suppress(h11.LocalProtocolError):  # halfway through a request: just close
            self.conn.send(h11.ConnectionClosed())
        self.transport.close()

    def _close_longest_idle(self) -> bool:
        idle = [
            other
            for other in self.connections
            if other is not self
            and isinstance(other, _LimitedH11)
            and not other._busy()
            and not other.transport.is_closing()
        ]
        if not idle:
            return False
        min(idle, key=lambda other: other._idle_since)._close()
        return True


def uvicorn_config(
    app: Any,
    *,
    host: str,
    port: int,
    log_level: str,
    max_connections: int | None,
    header_timeout_s: float,
    keep_alive_s: float,
) -> uvicorn.Config:
    """uvicorn's settings for ``vitkit serve``: the limits above, and uvicorn's own keep-alive
    timeout. Raises ``ValueError`` if ``max_connections`` does not fit the open-file limit."""
    protocol = type(
        "LimitedH11",
        (_LimitedH11,),
        {"max_connections": connection_cap(max_connections), "header_timeout_s": header_timeout_s},
    )
    return uvicorn.Config(
        app,
        host,
        port,
        log_level=log_level,
        http=protocol,
        backlog=ACCEPT_BATCH,
        timeout_keep_alive=keep_alive_s,  # type: ignore[arg-type]  # uvicorn's hint says int; call_later takes any
    )
