"""The HTTP side: live page, MJPEG stream, snapshots, JSON API, health and Prometheus metrics."""

from lgld.runtime.web.routes import STALE_AFTER_S, App, SnapshotError
from lgld.runtime.web.server import HttpServer, ServerError, port_free

__all__ = ["STALE_AFTER_S", "App", "HttpServer", "ServerError", "SnapshotError", "port_free"]
