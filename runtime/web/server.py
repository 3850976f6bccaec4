"""The HTTP server: binds the socket (early, so a busy port fails at start) and serves
:mod:`lgld.runtime.web.routes` on a thread, one thread per client.

It binds 127.0.0.1 unless another address is asked for explicitly.
"""

from __future__ import annotations

import errno
import logging
import socket
import socketserver
import sys
import threading
from http.server import ThreadingHTTPServer
from typing import Any

from lgld.runtime.web.routes import App, Handler

log = logging.getLogger("lgld.runtime")


class ServerError(RuntimeError):
    """The HTTP server cannot start (one-line reason)."""


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False  # do not wait for viewers (or idle keep-alive clients) on exit
    allow_reuse_address = True
    app: App

    def handle_error(self, request: Any, client_address: Any) -> None:
        """One log line instead of socketserver's traceback on stderr (the journal)."""
        exc = sys.exc_info()[1]
        text = str(exc).strip()
        log.warning("http: %s from %s: %s", type(exc).__name__, client_address[0],
                    text.splitlines()[0][:160] if text else "")

    def server_bind(self) -> None:
        # skip HTTPServer.server_bind's reverse DNS lookup (slow without a network)
        socketserver.TCPServer.server_bind(self)
        host, port = self.server_address[:2]
        self.server_name, self.server_port = str(host), int(port)


class HttpServer:
    """Owns the listening socket (bound at once, so a busy port fails early) and its thread."""

    def __init__(self, host: str, port: int) -> None:
        _Server.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            self.server = _Server((host, port), Handler)
        except OSError as exc:
            raise ServerError(_bind_error(host, port, exc)) from None
        self.host, self.port = host, int(self.server.server_address[1])
        self.app: App | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def start(self, app: App) -> HttpServer:
        self.app = self.server.app = app
        self._thread = threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.2},
            name="lgld-http", daemon=True,
        )
        self._thread.start()
        return self

    def close(self) -> None:
        if self.app is not None:
            self.app.stopping.set()
            self.app.pipeline.hub.wake()
        if self._thread is not None:
            self.server.shutdown()
            self._thread.join(2.0)
        self.server.server_close()


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot listen on {where}: the port is already in use (another lgld-run?)"
    if exc.errno == errno.EACCES:
        return f"cannot listen on {where}: permission denied (ports below 1024 need privileges)"
    if exc.errno == errno.EADDRNOTAVAIL:
        return f"cannot listen on {where}: no such address on this machine"
    if isinstance(exc, socket.gaierror):
        return f"cannot listen on {where}: unknown host name"
    return f"cannot listen on {where}: {exc.strerror or exc}"


def port_free(host: str, port: int) -> tuple[bool, str]:
    """Can we listen on host:port right now? (for the doctor)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
        return True, f"{host}:{port} is free"
    except OSError as exc:
        return False, _bind_error(host, port, exc)
