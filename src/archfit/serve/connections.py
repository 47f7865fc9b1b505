"""uvicorn as archfit serves with it: a header read timeout it lacks, and the server's config.

uvicorn bounds an idle keep-alive connection but not a client that opens a connection and sends
its request headers a byte a second (or never): each such client holds a file descriptor and a
parser forever. The protocol here closes a connection whose headers are not complete
`header_timeout` seconds after it opened (or after a kept-alive connection's next request began).
The body's own bound is the Server's (`body_timeout`, answered 408), which sees the request."""
from __future__ import annotations

import asyncio

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class BoundedHeaders(HttpToolsProtocol):
    header_timeout = 5.0  # set per server by `protocol()`

    _header_timer: asyncio.TimerHandle | None = None

    def _arm(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        if not self.transport.is_closing():  # 408 as uvicorn answers its own 400s, then closed
            message = f"request headers not complete within {self.header_timeout:g} s"
            self.transport.write(b"HTTP/1.1 408 Request Timeout\r\ncontent-type: text/plain; charset=utf-8\r\n"
                                 b"connection: close\r\ncontent-length: %d\r\n\r\n%s"
                                 % (len(message), message.encode()))
            self.transport.close()

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:  # a kept-alive connection's next request: its headers bounded too
        super().on_message_begin()
        self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc) -> None:
        self._disarm()
        super().connection_lost(exc)


def protocol(header_timeout: float) -> type[BoundedHeaders]:
    return type("BoundedHeaders", (BoundedHeaders,), {"header_timeout": header_timeout})


def config(app, host: str, port: int, header_timeout: float = 5.0, **kwargs):
    """The uvicorn Config archfit serves `app` with (the CLI's server and the tests' alike)."""
    import uvicorn

    return uvicorn.Config(app, host=host, port=port, http=protocol(header_timeout), lifespan="on", **kwargs)
