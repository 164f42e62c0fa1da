"""HTTP CONNECT proxies, sans-IO: proxy URLs, the CONNECT request and the proxy's answer.

A client behind a proxy opens a TCP connection to the proxy, writes
:func:`build_connect_request` and feeds what comes back to a :class:`ConnectResponseParser`
until it answers: :class:`TunnelEstablished` (a 2xx status; the connection is now a byte
pipe to the target, and :attr:`~TunnelEstablished.leftover` holds any bytes that came after
the head, which belong to the protocol spoken through the tunnel) or :class:`TunnelRefused`
(any other final status: 407 for missing or wrong credentials, 403, 502…). Bytes that are
not an HTTP/1.x response head, or a head larger than the bound, raise a
:class:`ProxyResponseError`.

TLS is never terminated at the proxy: the client speaks TLS to the target through the
tunnel, and verifies the target's certificate and host name, not the proxy's.

Credentials come from the proxy URL (``http://user:password@host:port``) as
:class:`ProxyCredentials`, sent as ``Proxy-Authorization: Basic``. The password is never
part of a ``repr``, a :meth:`ProxyURL.redacted` form or an error message.

The proxy may also come from the environment, as for curl and most HTTP clients:
:class:`EnvironmentProxy` reads ``HTTPS_PROXY`` and ``NO_PROXY`` from a mapping it is given
(never from ``os.environ`` at import) and decides per target (:func:`no_proxy_matches`).

The Twisted side is :class:`txapns.proxy.HTTPConnectEndpoint`.
"""

from __future__ import annotations

import base64
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn
from urllib.parse import SplitResult, quote, unquote, urlsplit

from .errors import ConnectionFailedError, ProtocolError

__all__ = [
    "DEFAULT_MAX_HEAD",
    "HTTPS_PROXY_VARIABLES",
    "NO_PROXY_VARIABLES",
    "ConnectResponseParser",
    "EnvironmentProxy",
    "ProxyAnswer",
    "ProxyAuthenticationError",
    "ProxyClosedError",
    "ProxyCredentials",
    "ProxyError",
    "ProxyRefusedError",
    "ProxyResponseError",
    "ProxyTimeoutError",
    "ProxyURL",
    "ProxyURLError",
    "TunnelEstablished",
    "TunnelRefused",
    "build_connect_request",
    "format_authority",
    "is_loopback",
    "no_proxy_matches",
    "parse_proxy_url",
    "proxy_from_environment",
]

#: The largest response head (status line and header lines, interim responses included)
#: accepted from a proxy.
DEFAULT_MAX_HEAD = 16 * 1024

# --- errors ----------------------------------------------------------------------------------


class ProxyError(ConnectionFailedError):
    """No tunnel through the HTTP proxy: it refused, broke the protocol, timed out, closed
    the connection or could not be reached; or its URL is unusable."""


class ProxyURLError(ProxyError, ValueError):
    """A proxy URL is not ``http://[user:password@]host:port``."""


class ProxyResponseError(ProxyError, ProtocolError):
    """The proxy answered with bytes that are not an HTTP/1.x response head, or with a head
    larger than the bound."""


class ProxyRefusedError(ProxyError):
    """The proxy answered CONNECT with a status other than 2xx (``status``, ``reason``).

    ``authenticate`` holds its ``Proxy-Authenticate`` challenge, if any (e.g. with 407).
    """

    def __init__(
        self, message: str, *, status: int, reason: str, authenticate: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.authenticate = authenticate


class ProxyAuthenticationError(ProxyRefusedError):
    """The proxy answered CONNECT with ``407 Proxy Authentication Required``: the credentials
    are missing or wrong. Retrying with the same ones cannot help, so clients give up at once.

    ``proxy`` names the proxy (``host:port``, or the URL with the password masked); the
    password is never part of it nor of the message.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int,
        reason: str,
        authenticate: str | None = None,
        proxy: str | None = None,
    ) -> None:
        super().__init__(message, status=status, reason=reason, authenticate=authenticate)
        self.proxy = proxy


class ProxyTimeoutError(ProxyError):
    """The proxy did not answer CONNECT (or could not be reached) in time."""


class ProxyClosedError(ProxyError):
    """The proxy closed the connection before the end of its answer to CONNECT."""


# --- proxy URLs ------------------------------------------------------------------------------

_LABEL = r"[A-Za-z0-9_][A-Za-z0-9_-]{0,62}"
_HOSTNAME = re.compile(rf"\A{_LABEL}(?:\.{_LABEL})*\.?\Z")


@dataclass(frozen=True, slots=True)
class ProxyCredentials:
    """A user name and password for ``Proxy-Authorization: Basic`` (RFC 7617, UTF-8).

    The password is left out of ``repr``.
    """

    username: str
    password: str = field(repr=False)

    def __post_init__(self) -> None:
        if ":" in self.username:
            raise ProxyURLError("a proxy user name cannot contain ':' (Basic authentication)")

    def authorization(self) -> str:
        """The value of the ``Proxy-Authorization`` header."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True, slots=True)
class ProxyURL:
    """A parsed ``http://[user:password@]host:port`` proxy URL (see :func:`parse_proxy_url`).

    ``repr`` and :meth:`redacted` never show the password.
    """

    host: str
    port: int
    credentials: ProxyCredentials | None = None

    def redacted(self) -> str:
        """The URL with the password replaced by ``***`` (for logs and messages)."""
        user = ""
        if self.credentials is not None:
            user = f"{quote(self.credentials.username, safe='')}:***@"
        return f"http://{user}{format_authority(self.host, self.port)}"

    def __str__(self) -> str:
        return self.redacted()


def _mask(url: str) -> str:
    """*url* with the password (if any) of its user information replaced by ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    cut = len(rest)
    for stop in "/?#":
        # A stop right after "://" (an empty authority) ends nothing: what follows may be
        # user:password@host typed after one slash too many, and it is masked too.
        i = rest.find(stop)
        if i > 0:
            cut = min(cut, i)
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"{user}@{host}"
    return f"{scheme}{sep}{netloc}{tail}"


def parse_proxy_url(url: str) -> ProxyURL:
    """Parse ``http://[user:password@]host:port`` (the port is required; user and password
    are percent-decoded). Raise :class:`ProxyURLError`, whose message never holds the
    password, for anything else: another scheme (``https://`` proxies are not supported), a
    path, query or fragment, a missing or out-of-range port, a bad host."""
    if not isinstance(url, str):
        raise ProxyURLError(f"a proxy URL is a string, not {type(url).__name__}")
    shown = repr(_mask(url))
    if any(ord(c) <= 0x20 or ord(c) == 0x7F for c in url):
        raise ProxyURLError(f"proxy URL {shown} contains white space or control characters")
    parts: SplitResult = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "https":
        raise ProxyURLError(
            f"proxy URL {shown}: https:// proxies (TLS to the proxy) are not supported; "
            "give the proxy's plain http:// address (the tunnel to APNs is TLS end to end)"
        )
    if scheme != "http" or not parts.netloc:
        raise ProxyURLError(f"proxy URL {shown} must look like http://[user:password@]host:port")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ProxyURLError(f"proxy URL {shown} must not have a path, query or fragment")
    host = parts.hostname or ""
    try:
        port = parts.port
    except ValueError:
        raise ProxyURLError(f"proxy URL {shown}: the port must be within 1..65535") from None
    if port is None or not 0 < port < 65536:
        raise ProxyURLError(f"proxy URL {shown} needs a port within 1..65535 (host:port)")
    try:
        format_authority(host, port)
    except ValueError:
        raise ProxyURLError(f"proxy URL {shown}: {host!r} is not a host name or address") from None
    credentials = None
    if parts.username is not None:
        username = unquote(parts.username)
        if not username:
            raise ProxyURLError(f"proxy URL {shown}: the user name is empty")
        credentials = ProxyCredentials(username, unquote(parts.password or ""))
    return ProxyURL(host=host, port=port, credentials=credentials)


def format_authority(host: str, port: int) -> str:
    """``host:port`` as a CONNECT target (IPv6 literals in brackets); ``ValueError`` if *host*
    is neither a DNS name nor an IP address, or *port* is outside 1..65535."""
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise ValueError(f"port must be within 1..65535, not {port!r}")
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if ":" in bare:
        try:
            address = ipaddress.IPv6Address(bare)
        except ValueError:
            raise ValueError(f"{host!r} is not a host name or IP address") from None
        return f"[{address.compressed}]:{port}"
    if not bare or len(bare) > 253 or not _HOSTNAME.match(bare):
        raise ValueError(f"{host!r} is not a host name or IP address")
    return f"{bare}:{port}"


def build_connect_request(
    host: str, port: int, *, credentials: ProxyCredentials | None = None
) -> bytes:
    """The CONNECT request head for a tunnel to ``host:port``::

        CONNECT api.push.apple.com:443 HTTP/1.1
        Host: api.push.apple.com:443
        Proxy-Authorization: Basic dXNlcjpwYXNz     (with credentials)

    ``ValueError`` for a host that is neither a DNS name nor an IP address.
    """
    authority = format_authority(host, port)
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if credentials is not None:
        lines.append(f"Proxy-Authorization: {credentials.authorization()}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii")


# --- the proxy's answer ----------------------------------------------------------------------

Headers = tuple[tuple[str, str], ...]


def _header(headers: Headers, name: str) -> str | None:
    wanted = name.lower()
    for key, value in headers:
        if key.lower() == wanted:
            return value
    return None


@dataclass(frozen=True, slots=True)
class TunnelEstablished:
    """The proxy answered 2xx: the connection is a tunnel to the target from now on.

    ``leftover`` holds the bytes received after the head: the start of the tunnelled stream,
    to be handed to the protocol spoken through it.
    """

    status: int
    reason: str
    headers: Headers
    leftover: bytes = b""

    def header(self, name: str) -> str | None:
        """The first header called *name* (any case), or ``None``."""
        return _header(self.headers, name)


@dataclass(frozen=True, slots=True)
class TunnelRefused:
    """The proxy answered with a final status other than 2xx: no tunnel."""

    status: int
    reason: str
    headers: Headers

    def header(self, name: str) -> str | None:
        """The first header called *name* (any case), or ``None``."""
        return _header(self.headers, name)

    def error(self, target: str, proxy: str | None = None) -> ProxyRefusedError:
        """The :class:`ProxyRefusedError` for this answer to ``CONNECT target`` through
        ``proxy`` (its name for the message: ``host:port`` or a URL with the password
        masked); a :class:`ProxyAuthenticationError` for 407."""
        reason = f" {self.reason}" if self.reason else ""
        who = f"the proxy {proxy}" if proxy else "the proxy"
        message = f"{who} refused CONNECT {target}: {self.status}{reason}"
        authenticate = self.header("Proxy-Authenticate")
        if self.status == 407:
            return ProxyAuthenticationError(
                f"{message} (missing or wrong credentials: give them in the proxy URL, "
                "http://user:password@host:port)",
                status=self.status,
                reason=self.reason,
                authenticate=authenticate,
                proxy=proxy,
            )
        return ProxyRefusedError(
            message, status=self.status, reason=self.reason, authenticate=authenticate
        )


ProxyAnswer = TunnelEstablished | TunnelRefused

_STATUS_LINE = re.compile(rb"\AHTTP/1\.[0-9] ([1-9][0-9][0-9])(?: (.*))?\Z", re.DOTALL)
_TOKEN = re.compile(rb"\A[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z")
_PREFIX = b"HTTP/"


def _show(line: bytes | bytearray) -> str:
    text = repr(bytes(line[:60]))
    return text + ("…" if len(line) > 60 else "")


class ConnectResponseParser:
    """Reads a proxy's answer to CONNECT, fed in pieces of any size.

    :meth:`feed` returns ``None`` while the head is incomplete, then the answer: a
    :class:`TunnelEstablished` (2xx) with the bytes that followed the head, or a
    :class:`TunnelRefused`. Interim 1xx responses are skipped. The whole head may be at most
    *max_head* bytes. Bytes that are not an HTTP/1.x response head raise
    :class:`ProxyResponseError` as soon as they are seen; so does a longer head. Line ends
    are CRLF, or a bare LF (RFC 9112 lets a recipient accept it); obsolete line folding is
    joined with a space. Once answered (or after an error, which it raises again) the parser
    takes no more bytes.
    """

    def __init__(self, max_head: int = DEFAULT_MAX_HEAD) -> None:
        if max_head < 16:
            raise ValueError("max_head must be at least 16 bytes")
        self.max_head = max_head
        self._buffer = bytearray()
        self._consumed = 0
        self._status: int | None = None
        self._reason = ""
        self._headers: list[tuple[str, str]] = []
        self._answer: ProxyAnswer | None = None
        self._error: ProxyResponseError | None = None

    @property
    def answer(self) -> ProxyAnswer | None:
        """The answer, once the head is complete."""
        return self._answer

    @property
    def received(self) -> int:
        """Bytes of head received so far."""
        return self._consumed + len(self._buffer)

    def feed(self, data: bytes) -> ProxyAnswer | None:
        """Take the next bytes from the proxy; return the answer once the head is complete."""
        if self._answer is not None:
            raise RuntimeError("the proxy already answered; the bytes belong to the tunnel")
        if self._error is not None:
            raise self._error
        try:
            return self._feed(data)
        except ProxyResponseError as e:
            self._error = e
            raise

    def _feed(self, data: bytes) -> ProxyAnswer | None:
        self._buffer += data
        buffer = self._buffer
        while True:
            end = buffer.find(b"\n")
            if end < 0:
                break
            line = bytes(buffer[:end])
            del buffer[: end + 1]
            self._consumed += end + 1
            if self._consumed > self.max_head:
                self._overflow()
            if line.endswith(b"\r"):
                line = line[:-1]
            answer = self._line(line)
            if answer is not None:
                self._answer = answer
                self._buffer = bytearray()
                return answer
        if self._consumed + len(buffer) > self.max_head:
            self._overflow()
        if self._status is None and buffer[: len(_PREFIX)] != _PREFIX[: len(buffer)]:
            raise ProxyResponseError(f"the proxy's answer is not HTTP/1.x: {_show(buffer)}")
        return None

    def eof(self, why: str = "") -> None:
        """The connection closed: raise :class:`ProxyClosedError` if the head is incomplete."""
        if self._answer is not None:
            return
        detail = f": {why}" if why else ""
        raise ProxyClosedError(
            f"the proxy closed the connection before answering CONNECT "
            f"({self.received} bytes of answer received){detail}"
        )

    def _overflow(self) -> NoReturn:
        raise ProxyResponseError(
            f"the proxy's answer head is longer than {self.max_head} bytes; giving up"
        )

    def _line(self, line: bytes) -> ProxyAnswer | None:
        if b"\r" in line or b"\x00" in line:
            raise ProxyResponseError(f"stray CR or NUL in the proxy's answer: {_show(line)}")
        if self._status is None:
            m = _STATUS_LINE.match(line)
            if m is None:
                raise ProxyResponseError(f"the proxy's answer is not HTTP/1.x: {_show(line)}")
            self._status = int(m.group(1))
            self._reason = (m.group(2) or b"").decode("latin-1").strip()
            return None
        if not line:
            return self._end_of_head()
        if line[:1] in (b" ", b"\t"):
            if not self._headers:
                raise ProxyResponseError(f"folded line before any header: {_show(line)}")
            last, text = self._headers[-1]
            more = line.strip(b" \t").decode("latin-1")
            self._headers[-1] = (last, f"{text} {more}" if text else more)
            return None
        name, colon, value = line.partition(b":")
        if not colon or not _TOKEN.match(name):
            raise ProxyResponseError(f"malformed header line from the proxy: {_show(line)}")
        self._headers.append((name.decode("ascii"), value.strip(b" \t").decode("latin-1")))
        return None

    def _end_of_head(self) -> ProxyAnswer | None:
        status = self._status
        assert status is not None
        headers = tuple(self._headers)
        self._status, self._headers = None, []
        if 100 <= status < 200 and status != 101:
            return None  # interim response (100 Continue…): the final one follows
        if 200 <= status < 300:
            return TunnelEstablished(status, self._reason, headers, bytes(self._buffer))
        return TunnelRefused(status, self._reason, headers)


# --- proxies from the environment ----------------------------------------------------------

#: The variables naming the proxy for TLS connections, in the order read: the first one set
#: wins, even when empty (which means "no proxy"), as with curl and Python's urllib.
HTTPS_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY")
#: The variables listing the hosts to reach directly, in the order read.
NO_PROXY_VARIABLES = ("no_proxy", "NO_PROXY")

_Address = ipaddress.IPv4Address | ipaddress.IPv6Address
_SEPARATORS = re.compile(r"[\s,]+")


def _bare_host(host: str) -> str:
    """*host* lower-cased, without IPv6 brackets or a trailing dot."""
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host.removesuffix(".")


def _address(host: str) -> _Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_loopback(host: str) -> bool:
    """Whether *host* names this machine: ``localhost`` (and ``*.localhost``, RFC 6761) or a
    loopback address (``127.0.0.0/8``, ``::1``, ``::ffff:127.0.0.1``). No name is resolved."""
    name = _bare_host(host)
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = _address(name)
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address is not None and address.is_loopback


def _split_entry(entry: str) -> tuple[str, int | None] | None:
    """A ``NO_PROXY`` entry as ``(host, port or None)``; ``None`` if it cannot match."""
    if entry.startswith("["):
        inside, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            return None
        host, port = inside, (rest[1:] if rest else None)
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    else:  # a name, an IPv4 address, a bare IPv6 address or a range: no port
        return entry, None
    if port is None:
        return host, None
    if not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


def no_proxy_matches(host: str, port: int, no_proxy: str) -> bool:
    """Whether the ``NO_PROXY`` list *no_proxy* says to reach ``host:port`` directly.

    The rules, curl's (7.86 and later) plus ports as in Go and Python's urllib: entries are
    separated by commas or white space, case does not matter, and a trailing dot is ignored.

    * ``*`` matches every host;
    * a name matches itself and every name under it (``example.com`` and ``.example.com``
      both match ``example.com`` and ``api.example.com``, never ``badexample.com``;
      ``*.example.com`` is the same);
    * an IP address (IPv6 bare or in brackets) matches that address, and a CIDR range
      (``10.0.0.0/8``, ``fd00::/8``) every address in it; names are never resolved, so an
      address entry never matches a name nor a name entry an address;
    * ``host:port`` (``[v6]:port``) matches only that port;
    * an entry that cannot match anything (a bad port, a bad range) is ignored.
    """
    name = _bare_host(host)
    address = _address(name)
    for raw in _SEPARATORS.split(no_proxy.lower()):
        if raw == "*":
            return True
        split = _split_entry(raw) if raw else None
        if split is None:
            continue
        entry, entry_port = split
        if entry_port is not None and entry_port != port:
            continue
        if "/" in entry:
            try:
                network = ipaddress.ip_network(entry, strict=False)
            except ValueError:
                continue
            if address is not None and address.version == network.version and address in network:
                return True
            continue
        entry_address = _address(entry)
        if entry_address is not None or address is not None:
            if address is not None and address == entry_address:
                return True
            continue
        domain = entry.removeprefix("*.").removeprefix(".").removesuffix(".")
        if domain and (name == domain or name.endswith("." + domain)):
            return True
    return False


def _first_set(environ: Mapping[str, str], names: tuple[str, ...]) -> tuple[str, str]:
    """``(name, stripped value)`` of the first of *names* set in *environ*, or ``("", "")``."""
    for name in names:
        value = environ.get(name)
        if value is not None:
            return name, value.strip()
    return "", ""


@dataclass(frozen=True, slots=True)
class EnvironmentProxy:
    """The proxy settings an environment gives (:meth:`from_environ`): the proxy of
    ``https_proxy``/``HTTPS_PROXY`` (``None`` when unset or empty), the name of the variable
    that gave it, and the ``no_proxy``/``NO_PROXY`` list. :meth:`for_target` says whether a
    connection goes through the proxy. ``repr`` never shows the proxy's password."""

    proxy: ProxyURL | None = None
    variable: str = ""
    no_proxy: str = ""

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> EnvironmentProxy:
        """Read *environ* (e.g. ``os.environ``). A proxy URL may leave out ``http://``, but
        needs its port; :class:`ProxyURLError` (naming the variable, never the password) for
        one that is unusable (``https://`` and ``socks`` proxies are not supported)."""
        variable, value = _first_set(environ, HTTPS_PROXY_VARIABLES)
        _, no_proxy = _first_set(environ, NO_PROXY_VARIABLES)
        if not value:
            return cls(None, "", no_proxy)
        url = value if "://" in value else "http://" + value
        try:
            proxy = parse_proxy_url(url)
        except ProxyURLError as e:
            raise ProxyURLError(
                f"{variable} (from the environment): {e}; set proxy_from_env = false "
                "(--no-env-proxy) to ignore it"
            ) from None
        return cls(proxy, variable, no_proxy)

    def for_target(self, host: str, port: int) -> ProxyURL | None:
        """The proxy for a connection to ``host:port``; ``None`` to connect directly: no
        proxy, a loopback target (never proxied, as in Go's net/http) or one that
        ``NO_PROXY`` lists."""
        if self.proxy is None or is_loopback(host) or no_proxy_matches(host, port, self.no_proxy):
            return None
        return self.proxy


def proxy_from_environment(environ: Mapping[str, str], host: str, port: int) -> ProxyURL | None:
    """The proxy the environment *environ* gives for a TLS connection to ``host:port``, or
    ``None`` for a direct connection; see :class:`EnvironmentProxy` and
    :func:`no_proxy_matches`."""
    return EnvironmentProxy.from_environ(environ).for_target(host, port)
