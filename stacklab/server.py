"""The `web` process: daphne serving `stacklab.asgi:application`, with the one protocol option
daphne has no flag for. Run it exactly as daphne, with daphne's arguments:

    python -m stacklab.server -b 127.0.0.1 -p 8000 stacklab.asgi:application

A WebSocket that the server itself must fail (a frame or message over daphne's 1 MiB limit,
text that is not UTF-8, a protocol error) is closed with its code (1009, 1007, 1002) and a
reason. autobahn's default, `failByDrop`, drops the TCP connection without a close frame
instead, which a browser reports as 1006 with no reason: indistinguishable from a network cut.

This leans on a daphne internal: `Server.run()` assigning `self.ws_factory` before it sets the
factory's options (checked against daphne 4.2.3). A daphne that builds the factory another way
would bring failByDrop back silently; tests/e2e/test_web_server.py (the refused frames close
with 1009/1007) fails then, so run it after upgrading daphne.
"""

from __future__ import annotations

from daphne.cli import CommandLineInterface
from daphne.server import Server
from daphne.ws_protocol import WebSocketFactory


class ClosingServer(Server):
    """daphne's server, failing WebSockets with a close frame rather than by dropping them."""

    # daphne builds its WebSocket factory inside `run()`, which then serves until shutdown, so
    # the option is set as the factory is stored there (daphne's own options, set next, keep it).
    @property
    def ws_factory(self) -> WebSocketFactory:
        return self._ws_factory

    @ws_factory.setter
    def ws_factory(self, factory: WebSocketFactory) -> None:
        factory.setProtocolOptions(failByDrop=False)
        self._ws_factory = factory


class ClosingCommandLine(CommandLineInterface):
    server_class = ClosingServer


if __name__ == "__main__":
    ClosingCommandLine.entrypoint()
