"""systemd notifications (READY, WATCHDOG, STATUS, STOPPING) without a dependency.

Under systemd with ``Type=notify`` the service manager passes ``$NOTIFY_SOCKET``; a datagram
such as ``READY=1`` on that socket reports progress. ``WatchdogSec=`` sets ``$WATCHDOG_USEC``:
the service must send ``WATCHDOG=1`` more often than that or be restarted. Everywhere else
(no ``$NOTIFY_SOCKET``) every call is a no-op.
"""

from __future__ import annotations

import os
import socket
import time


def notify(message: str) -> bool:
    """Send one notification; False when not under systemd or when sending failed."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":  # abstract namespace
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
        return True
    except OSError:
        return False


def watchdog_interval() -> float | None:
    """Seconds between required WATCHDOG=1 pings (None when no watchdog is set for us)."""
    usec = os.environ.get("WATCHDOG_USEC", "")
    pid = os.environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) <= 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 1_000_000


def under_systemd() -> bool:
    """True when started by systemd (as a service)."""
    return bool(os.environ.get("INVOCATION_ID") or os.environ.get("NOTIFY_SOCKET"))


class Notifier:
    """READY once, WATCHDOG at half the watchdog interval, STATUS when it changes."""

    def __init__(self) -> None:
        self.interval = watchdog_interval()
        self._last_ping = 0.0
        self._last_status = ""

    def ready(self, status: str = "") -> None:
        notify("READY=1" + (f"\nSTATUS={status}" if status else ""))

    def status(self, text: str) -> None:
        if text != self._last_status:
            self._last_status = text
            notify(f"STATUS={text}")

    def watchdog(self, healthy: bool = True) -> bool:
        """Ping if healthy and due; True when a ping was sent."""
        if not healthy or self.interval is None:
            return False
        now = time.monotonic()
        if now - self._last_ping < self.interval / 2:
            return False
        self._last_ping = now
        return notify("WATCHDOG=1")

    def stopping(self) -> None:
        notify("STOPPING=1")
