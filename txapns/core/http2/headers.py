"""A stateless HPACK encoder for request headers (RFC 7541), specialised for APNs.

The encoder never touches the dynamic table: every field is either an *indexed* reference to a
**static** table entry (``:method: POST`` is the single byte ``0x83``) or a *literal without
indexing* — with the name taken from the static table where it is there (``:path`` is index 4,
``authorization`` 23, ``content-length`` 28) and written as a literal otherwise
(``apns-id`` …). Values are never Huffman-coded. Because nothing is ever inserted, the header
block of a request does not depend on what was sent before, which is what makes it possible to
encode the constant part of the requests for one (authority, topic, push type, priority,
authorization) combination **once** (:class:`HeaderBlockTemplate`) and only splice the
per-request fields (``:path``, ``apns-id``, ``apns-expiration``, ``apns-collapse-id``,
``content-length``) in per request. This is also what Apple asks for: "encode :path and
authorization as literal header fields without indexing", so that a stream of requests does
not churn APNs' small dynamic table.

The peer's SETTINGS_HEADER_TABLE_SIZE only limits the dynamic table *we* could use; since we use
none, the only obligation left is the dynamic table size update that the connection puts at the
start of the first header block it sends (see :mod:`.connection`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

from ..errors import InvalidFieldError
from ..notification import PushType

__all__ = [
    "STATIC_FIELD_INDEX",
    "STATIC_NAME_INDEX",
    "STATIC_TABLE",
    "HeaderBlockTemplate",
    "check_field",
    "device_path",
    "encode_field",
    "encode_header_block",
    "encode_integer",
    "encode_string",
    "literal_name_prefix",
    "valid_value",
]

#: RFC 7541 Appendix A: the static table, index 1 to 61.
STATIC_TABLE: tuple[tuple[bytes, bytes], ...] = (
    (b":authority", b""),
    (b":method", b"GET"),
    (b":method", b"POST"),
    (b":path", b"/"),
    (b":path", b"/index.html"),
    (b":scheme", b"http"),
    (b":scheme", b"https"),
    (b":status", b"200"),
    (b":status", b"204"),
    (b":status", b"206"),
    (b":status", b"304"),
    (b":status", b"400"),
    (b":status", b"404"),
    (b":status", b"500"),
    (b"accept-charset", b""),
    (b"accept-encoding", b"gzip, deflate"),
    (b"accept-language", b""),
    (b"accept-ranges", b""),
    (b"accept", b""),
    (b"access-control-allow-origin", b""),
    (b"age", b""),
    (b"allow", b""),
    (b"authorization", b""),
    (b"cache-control", b""),
    (b"content-disposition", b""),
    (b"content-encoding", b""),
    (b"content-language", b""),
    (b"content-length", b""),
    (b"content-location", b""),
    (b"content-range", b""),
    (b"content-type", b""),
    (b"cookie", b""),
    (b"date", b""),
    (b"etag", b""),
    (b"expect", b""),
    (b"expires", b""),
    (b"from", b""),
    (b"host", b""),
    (b"if-match", b""),
    (b"if-modified-since", b""),
    (b"if-none-match", b""),
    (b"if-range", b""),
    (b"if-unmodified-since", b""),
    (b"last-modified", b""),
    (b"link", b""),
    (b"location", b""),
    (b"max-forwards", b""),
    (b"proxy-authenticate", b""),
    (b"proxy-authorization", b""),
    (b"range", b""),
    (b"referer", b""),
    (b"refresh", b""),
    (b"retry-after", b""),
    (b"server", b""),
    (b"set-cookie", b""),
    (b"strict-transport-security", b""),
    (b"transfer-encoding", b""),
    (b"user-agent", b""),
    (b"vary", b""),
    (b"via", b""),
    (b"www-authenticate", b""),
)

#: name -> lowest static index with that name.
STATIC_NAME_INDEX: dict[bytes, int] = {}
#: (name, value) -> static index, for the entries that carry a value.
STATIC_FIELD_INDEX: dict[tuple[bytes, bytes], int] = {}
for _index, (_name, _value) in enumerate(STATIC_TABLE, start=1):
    STATIC_NAME_INDEX.setdefault(_name, _index)
    if _value:
        STATIC_FIELD_INDEX[(_name, _value)] = _index
del _index, _name, _value

#: The request pseudo-header fields a client may send (RFC 9113 §8.3.1).
_REQUEST_PSEUDO = frozenset({b":method", b":scheme", b":authority", b":path"})
#: Connection-specific fields are forbidden in HTTP/2 (RFC 9113 §8.2.2).
_CONNECTION_SPECIFIC = frozenset(
    {b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"upgrade", b"te"}
)
_NAME = re.compile(rb"\A:?[a-z0-9!#$%&'*+\-.^_`|~]+\Z")
_FORBIDDEN_IN_VALUE = b"\r\n\x00"
_WHITESPACE = (0x20, 0x09)


def valid_value(value: bytes) -> bool:
    """No CR, LF or NUL, and no leading or trailing space or tab (RFC 9113 §8.2.1)."""
    return len(value.translate(None, _FORBIDDEN_IN_VALUE)) == len(value) and (
        not value or (value[0] not in _WHITESPACE and value[-1] not in _WHITESPACE)
    )


#: Single-byte string-length prefixes (H = 0), for lengths below 127.
_LEN = tuple(bytes((n,)) for n in range(127))


def encode_integer(value: int, prefix_bits: int, first_byte: int = 0) -> bytes:
    """RFC 7541 §5.1 integer with an ``prefix_bits``-bit prefix; ``first_byte`` holds the
    pattern bits above the prefix."""
    if value < 0:
        raise ValueError("HPACK integers are non-negative")
    limit = (1 << prefix_bits) - 1
    if value < limit:
        return bytes((first_byte | value,))
    out = bytearray((first_byte | limit,))
    value -= limit
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def encode_string(data: bytes) -> bytes:
    """RFC 7541 §5.2 string literal, not Huffman-coded."""
    n = len(data)
    return (_LEN[n] if n < 127 else encode_integer(n, 7)) + data


def literal_name_prefix(name: bytes) -> bytes:
    """The start of a "literal header field without indexing" for ``name``: the static name
    index if the static table has the name, else the name as a literal."""
    index = STATIC_NAME_INDEX.get(name)
    if index is not None:
        return encode_integer(index, 4, 0x00)
    return b"\x00" + encode_string(name)


def check_field(name: bytes, value: bytes) -> None:
    """Reject what an HTTP/2 server must treat as malformed (RFC 9113 §8.2)."""
    if not _NAME.match(name):
        raise InvalidFieldError(f"invalid header name {name!r} (lower-case token expected)")
    if name in _CONNECTION_SPECIFIC:
        raise InvalidFieldError(f"connection-specific header {name!r} is forbidden in HTTP/2")
    if name[:1] == b":" and name not in _REQUEST_PSEUDO:
        raise InvalidFieldError(f"unknown request pseudo-header {name!r}")
    if not valid_value(value):
        raise InvalidFieldError(f"header {name!r}: value has CR, LF, NUL or surrounding whitespace")


def encode_field(name: bytes, value: bytes) -> bytes:
    """One field: indexed if the static table has exactly it, else literal without indexing."""
    index = STATIC_FIELD_INDEX.get((name, value))
    if index is not None:
        return encode_integer(index, 7, 0x80)
    return literal_name_prefix(name) + encode_string(value)


def _as_bytes(value: str | bytes) -> bytes:
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def encode_header_block(headers: Iterable[tuple[str | bytes, str | bytes]]) -> bytes:
    """A complete, stateless header block for any field list (pseudo-header fields first).

    This is the general, slower path; requests to APNs use :class:`HeaderBlockTemplate`.
    """
    parts = []
    seen_regular = False
    for raw_name, raw_value in headers:
        name, value = _as_bytes(raw_name), _as_bytes(raw_value)
        check_field(name, value)
        if name[:1] == b":":
            if seen_regular:
                raise InvalidFieldError("pseudo-header fields must come before the others")
        else:
            seen_regular = True
        parts.append(encode_field(name, value))
    return b"".join(parts)


def device_path(token: bytes) -> bytes:
    """``:path`` of a notification to the device ``token`` (raw bytes)."""
    return b"/3/device/" + token.hex().encode("ascii")


_PATH = literal_name_prefix(b":path")
_APNS_ID = literal_name_prefix(b"apns-id")
_APNS_EXPIRATION = literal_name_prefix(b"apns-expiration")
_APNS_COLLAPSE_ID = literal_name_prefix(b"apns-collapse-id")
_CONTENT_LENGTH = literal_name_prefix(b"content-length")


class HeaderBlockTemplate:
    """The HPACK encoding of a request's constant fields, computed once.

    ``:method``, ``:scheme`` and ``:authority`` come first, then the per-request ``:path``, then
    the constant regular fields (``apns-topic``, ``apns-push-type``, ``apns-priority``,
    ``authorization``, ``extra_headers``), then the per-request ones. Keep one template per
    (topic, push type, priority, authorization) combination in use; rebuild it with
    :meth:`with_authorization` when the JWT is refreshed. Construction validates every field
    (raising :class:`~txapns.core.errors.InvalidFieldError`).
    """

    __slots__ = (
        "_head",
        "_tail",
        "authority",
        "authorization",
        "extra_headers",
        "method",
        "priority",
        "push_type",
        "scheme",
        "topic",
    )

    def __init__(
        self,
        authority: str,
        *,
        topic: str | None = None,
        push_type: PushType | str | None = None,
        priority: int | None = None,
        authorization: str | None = None,
        method: str = "POST",
        scheme: str = "https",
        extra_headers: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.authority = authority
        self.topic = topic
        self.push_type = push_type.value if isinstance(push_type, PushType) else push_type
        self.priority = priority
        self.authorization = authorization
        self.method = method
        self.scheme = scheme
        self.extra_headers = tuple(extra_headers)
        head: list[tuple[bytes, bytes]] = [
            (b":method", method.encode("ascii")),
            (b":scheme", scheme.encode("ascii")),
            (b":authority", authority.encode("ascii")),
        ]
        tail: list[tuple[bytes, bytes]] = []
        if topic is not None:
            tail.append((b"apns-topic", topic.encode("utf-8")))
        if self.push_type is not None:
            tail.append((b"apns-push-type", self.push_type.encode("ascii")))
        if priority is not None:
            tail.append((b"apns-priority", b"%d" % priority))
        if authorization is not None:
            tail.append((b"authorization", authorization.encode("ascii")))
        for name, value in self.extra_headers:
            bname = name.encode("ascii")
            if bname[:1] == b":":
                raise InvalidFieldError("extra_headers cannot carry pseudo-header fields")
            tail.append((bname, value.encode("utf-8")))
        for name_b, value_b in head + tail:
            check_field(name_b, value_b)
        self._head = b"".join(encode_field(n, v) for n, v in head)
        self._tail = b"".join(encode_field(n, v) for n, v in tail)

    def with_authorization(self, authorization: str | None) -> HeaderBlockTemplate:
        """The same template with another ``authorization`` value (a refreshed JWT)."""
        return HeaderBlockTemplate(
            self.authority,
            topic=self.topic,
            push_type=self.push_type,
            priority=self.priority,
            authorization=authorization,
            method=self.method,
            scheme=self.scheme,
            extra_headers=self.extra_headers,
        )

    def encode(
        self,
        path: bytes,
        *,
        apns_id: str | bytes | None = None,
        expiration: int | None = None,
        collapse_id: str | bytes | None = None,
        content_length: int | None = None,
    ) -> bytes:
        """The complete header block of one request.

        ``path`` is bytes (see :func:`device_path`); the other values are checked for the
        characters HTTP/2 forbids in a field value.
        """
        n = len(path)
        if not n or path[0] != 0x2F or not valid_value(path):  # 0x2F: "/"
            raise InvalidFieldError(f"invalid :path {path!r}")
        parts = [self._head, _PATH, _LEN[n] if n < 127 else encode_integer(n, 7), path, self._tail]
        if apns_id is not None:
            value = apns_id.encode("ascii") if isinstance(apns_id, str) else apns_id
            if not valid_value(value):
                raise InvalidFieldError(f"invalid apns-id {value!r}")
            n = len(value)
            parts += (_APNS_ID, _LEN[n] if n < 127 else encode_integer(n, 7), value)
        if expiration is not None:
            value = b"%d" % expiration
            parts += (_APNS_EXPIRATION, _LEN[len(value)], value)
        if collapse_id is not None:
            value = collapse_id.encode("utf-8") if isinstance(collapse_id, str) else collapse_id
            if not valid_value(value):
                raise InvalidFieldError(f"invalid apns-collapse-id {value!r}")
            n = len(value)
            parts += (_APNS_COLLAPSE_ID, _LEN[n] if n < 127 else encode_integer(n, 7), value)
        if content_length is not None:
            value = b"%d" % content_length
            parts += (_CONTENT_LENGTH, _LEN[len(value)], value)
        return b"".join(parts)

    def __repr__(self) -> str:
        # Never the authorization value: reprs end up in logs.
        return (
            f"<HeaderBlockTemplate authority={self.authority} topic={self.topic}"
            f" push_type={self.push_type} priority={self.priority}"
            f" authorization={'set' if self.authorization else 'none'}>"
        )
