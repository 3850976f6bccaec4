"""The HTTP side: live page, MJPEG stream, snapshots, JSON API, health and Prometheus metrics."""

from lgld.runtime.web.routes import App, SnapshotError
from lgld.runtime.web.server import HttpServer, ServerError, port_free

__all__ = ["App", "HttpServer", "ServerError", "SnapshotError", "port_free"]
