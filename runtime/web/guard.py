"""Who may use the HTTP server: the Host and Origin checks and the optional access token.

Every request passes :meth:`AccessGuard.refusal` before any route sees it (the server calls it
once, in its request parsing), so a route added later is covered without doing anything.

* Host: a page on another site can make a browser send requests to the Pi by pointing its own
  domain name at the Pi's address (DNS rebinding); the request then carries that foreign name in
  ``Host``. Only localhost, this machine's names, the address the request arrived on and the
  configured ``[http] allowed_hosts`` are served.
* Origin: a state-changing request (anything but GET/HEAD/OPTIONS) that a browser sends from a
  foreign page carries that page's ``Origin``; it is refused unless it is the page's own origin:
  scheme http or https, the host, and the port the request came to (another app on the same
  machine is another origin). Tools such as curl send no Origin and are not affected.
* Content type: a POST (every state-changing route) must say ``Content-Type:
  application/json`` (415 otherwise): a foreign page can send a "simple" ``text/plain`` or
  form POST without the browser asking first, but not a JSON one.
* Token: with ``[http] token_file`` (or ``$LGLD_HTTP_TOKEN``) every request but ``/healthz`` must
  carry it: ``Authorization: Bearer TOKEN``, or ``?token=TOKEN`` once in the browser, which sets
  an HttpOnly, SameSite=Strict cookie for the page, its stream and its buttons. A token file
  without a token is an error, never a silent run without one; the cookie is found among
  other sites' cookies however they are written.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import os
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

from lgld.runtime.config import ConfigError, HttpSection

TOKEN_ENV = "LGLD_HTTP_TOKEN"
COOKIE = "lgld_token"
MIN_TOKEN_CHARS = 16
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
JSON_TYPE = "application/json"
DEFAULT_PORTS = {"http": 80, "https": 443}
OPEN_PATHS = frozenset({"/healthz"})  # liveness probes carry no token


def load_token(http: HttpSection, environ: Mapping[str, str] | None = None) -> str:
    """The access token: $LGLD_HTTP_TOKEN, else the first line of ``token_file``, else ""."""
    environ = os.environ if environ is None else environ
    token, origin = environ.get(TOKEN_ENV, "").strip(), f"${TOKEN_ENV}"
    if not token and http.token_file:
        path = Path(http.token_file).expanduser()
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            reason = getattr(exc, "strerror", None) or "not UTF-8 text"
            raise ConfigError(f"http.token_file {path}: cannot read the token: {reason}") from None
        token, origin = (lines[0].strip() if lines else ""), f"http.token_file {path}"
        if not token:
            raise ConfigError(f"{origin}: the first line holds no token (an empty token file "
                              "would leave the server open; write one, or unset token_file)")
    if token and (len(token) < MIN_TOKEN_CHARS or not token.isprintable() or " " in token):
        raise ConfigError(f"{origin}: the token must be {MIN_TOKEN_CHARS}+ printable characters "
                          "without spaces")
    return token


def is_json(content_type: str | None) -> bool:
    """True for ``application/json``, with or without parameters (``; charset=utf-8``)."""
    return (content_type or "").split(";", 1)[0].strip().lower() == JSON_TYPE


def is_loopback(host: str) -> bool:
    """True for localhost and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _host_part(value: str) -> str:
    """"name:port" / "[v6]:port" / "name" -> lower-case name without port or brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        return value[1 : value.find("]")] if "]" in value else value
    if value.count(":") == 1:
        value = value.split(":", 1)[0]
    return value.rstrip(".")


def _port_part(value: str, default: int) -> int | None:
    """"name:port" / "[v6]:port" -> port; ``default`` when none is written; None if malformed."""
    value = value.strip()
    tail = value.rsplit("]", 1)[-1] if value.startswith("[") else value
    if tail.count(":") != 1:
        return default if ":" not in tail else None
    port = tail.split(":", 1)[1]
    if not port:
        return default
    return int(port) if port.isdigit() and 0 < int(port) < 65536 else None


def cookie_values(header: str, name: str) -> list[str]:
    """Every value of cookie ``name`` in a Cookie header. Split on ";" by hand: SimpleCookie
    gives up on the whole header at the first cookie it dislikes (a quote, a space), so another
    site's cookie on the same host would hide the token."""
    values = []
    for part in header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            values.append(value)
    return values


def _machine_names() -> set[str]:
    names = {socket.gethostname().lower()}
    names |= {f"{n.split('.')[0]}.local" for n in names}
    with contextlib.suppress(OSError):  # resolver trouble: the short name still works
        names.add(socket.getfqdn().lower())
    return names


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: HTTP status and a one-line message."""

    status: int
    message: str


class AccessGuard:
    """The Host, Origin and token checks (see the module docstring)."""

    def __init__(self, allowed_hosts: Iterable[str] = (), token: str = "") -> None:
        self.names = {"localhost", *_machine_names(), *(_host_part(h) for h in allowed_hosts)}
        self.token = token

    def host_allowed(self, host: str, local_address: str) -> bool:
        name = _host_part(host)
        return bool(name) and (name in self.names or is_loopback(name)
                               or name == _host_part(local_address))

    def refusal(self, method: str, target: str, headers: Mapping[str, str],
                local_address: str, local_port: int | None = None) -> Refusal | None:
        """None when the request may go on, else why not (checked before any route)."""
        host = headers.get("Host")
        if host is not None and not self.host_allowed(host, local_address):
            return Refusal(403, f"host {host[:80]!r} is not served here "
                                "(add it to [http] allowed_hosts)")
        origin = headers.get("Origin")
        if method not in SAFE_METHODS and origin is not None:
            if origin == "null":
                return Refusal(403, "requests from an opaque origin are refused")
            if not self.same_origin(origin, host, local_address, local_port):
                return Refusal(403, f"requests from origin {origin[:80]!r} are refused "
                                    "(not this server's scheme, host and port)")
        path = urlsplit(target).path
        if self.token and path not in OPEN_PATHS and not self._authorized(target, headers):
            return Refusal(401, "an access token is required (see docs/deploy.md)")
        return None

    @staticmethod
    def body_refusal(method: str, headers: Mapping[str, str]) -> Refusal | None:
        """None when a request's body may be read, else why not: a POST says it is JSON."""
        if method == "POST" and not is_json(headers.get("Content-Type")):
            return Refusal(415, f"a {method} needs Content-Type: {JSON_TYPE}")
        return None

    def same_origin(self, origin: str, host: str | None, local_address: str,
                    local_port: int | None) -> bool:
        """True when ``origin`` is this server as the browser addressed it: http(s), a host
        that passes the Host check, and the port of the Host header (or the socket's)."""
        try:
            parts = urlsplit(origin)
        except ValueError:
            return False
        scheme = parts.scheme.lower()
        if scheme not in DEFAULT_PORTS or not parts.netloc or parts.path not in ("", "/"):
            return False
        if not self.host_allowed(parts.netloc, local_address):
            return False
        origin_port = _port_part(parts.netloc, DEFAULT_PORTS[scheme])
        expected = local_port if host is None else _port_part(host, DEFAULT_PORTS[scheme])
        return origin_port is not None and origin_port == expected

    def _authorized(self, target: str, headers: Mapping[str, str]) -> bool:
        offered = []
        auth = headers.get("Authorization", "")
        if auth[:7].lower() == "bearer ":
            offered.append(auth[7:].strip())
        offered += cookie_values(headers.get("Cookie") or "", COOKIE)
        offered += parse_qs(urlsplit(target).query).get("token", [])
        expected = self.token.encode()
        return any(hmac.compare_digest(o.encode(), expected) for o in offered)

    def set_cookie(self, target: str) -> str | None:
        """The Set-Cookie value after a valid ?token= (so the page's own requests carry it)."""
        if not self.token:
            return None
        given = parse_qs(urlsplit(target).query).get("token", [])
        if any(hmac.compare_digest(t.encode(), self.token.encode()) for t in given):
            return f"{COOKIE}={self.token}; Path=/; HttpOnly; SameSite=Strict"
        return None
