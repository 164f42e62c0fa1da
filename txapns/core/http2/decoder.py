"""HPACK decoding of response header blocks (RFC 7541), sans-IO.

Why not ``hpack.Decoder``: profiling the HTTP/2 client against the neutral Node mock put
``hpack`` at about 45 % of the client's CPU per notification (~19 of ~42 µs), most of it in
Huffman-decoding the ``apns-id`` APNs echoes in every answer, plus per-field ``memoryview``
slicing, ``HeaderTuple`` objects and ``log.debug`` calls. APNs answers are a handful of
fields (``:status``, ``apns-id``, ``apns-unique-id``; ``content-length`` and
``content-type`` on errors), and a server's encoder indexes the ever-changing ``apns-id``
values, so every answer also inserts into and evicts from the dynamic table. This decoder is
general (any field, any representation), but shaped for that traffic:

* Huffman strings are decoded a whole **byte** at a time through a state machine whose
  transitions (state, input byte) → (next state, emitted bytes) are computed on first use and
  kept in a flat list: an ``apns-id`` takes ~27 list lookups instead of 54 nibble steps;
* the dynamic table is a :class:`collections.deque`, newest entry first, with its size kept
  as RFC 7541 §4.1 counts it (name + value + 32), evicting from the old end.

``hpack`` stays as this module's test oracle: any header block ``hpack.Encoder`` produces
(any table size, updates, evictions) decodes to the same list (``tests/test_http2_decoder.py``).

Errors: :class:`HeaderDecodingError` for anything malformed (the connection answers
COMPRESSION_ERROR), :class:`HeaderListTooLargeError` past ``max_header_list_size``
(ENHANCE_YOUR_CALM).
"""

from __future__ import annotations

from collections import deque

from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH

from .headers import STATIC_TABLE

__all__ = [
    "HeaderDecoder",
    "HeaderDecodingError",
    "HeaderListTooLargeError",
    "huffman_decode",
]

#: RFC 7541 §4.1: an entry's size is its name and value lengths plus 32.
ENTRY_OVERHEAD = 32
#: Integers (indexes, lengths, table sizes) above this are refused (RFC 7541 §5.1 lets a
#: decoder set limits); 2**32 - 1 covers every SETTINGS value.
MAX_INTEGER = 0xFFFFFFFF

_STATIC_LEN = len(STATIC_TABLE)
_FIRST_DYNAMIC = _STATIC_LEN + 1


class HeaderDecodingError(ValueError):
    """The header block is not valid HPACK (or breaks our limits): COMPRESSION_ERROR."""


class HeaderListTooLargeError(HeaderDecodingError):
    """The decoded header list is larger than ``max_header_list_size``."""


# --- Huffman (RFC 7541 §5.2, Appendix B) ------------------------------------------------------

_EOS = 256


def _build_tree() -> tuple[list[list[int]], list[int], list[bool]]:
    """The code tree: ``children[node] = [child for bit 0, child for bit 1]``, where a child
    ``>= 0`` is an inner node and ``~symbol`` (negative) a leaf; plus each node's depth and
    whether its path from the root is all 1 bits (a valid padding prefix)."""
    children: list[list[int]] = [[0, 0]]
    depth = [0]
    ones = [True]
    for symbol, (code, length) in enumerate(zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)):
        node = 0
        for i in range(length - 1, -1, -1):
            bit = (code >> i) & 1
            if i == 0:
                children[node][bit] = ~symbol
                break
            child = children[node][bit]
            if child <= 0:  # 0 = not made yet (the root is nobody's child)
                child = len(children)
                children.append([0, 0])
                depth.append(depth[node] + 1)
                ones.append(ones[node] and bit == 1)
                children[node][bit] = child
            node = child
    return children, depth, ones


_CHILDREN, _DEPTH, _ONES = _build_tree()
#: The state that swallows everything after the EOS symbol was decoded (an error).
_FAILED = len(_CHILDREN)
#: States where a string may end: at a symbol boundary, or inside at most 7 bits of 1s.
_ACCEPTING = frozenset(
    node for node in range(len(_CHILDREN)) if node == 0 or (_ONES[node] and _DEPTH[node] <= 7)
)


#: ``(state << 8) | input byte`` → ``(next state << 8, bytes emitted)``, or None until first
#: needed (:func:`_transition` fills it in): only a few hundred of the 65,792 transitions ever
#: occur in practice, so nothing is computed up front, and a flat list is the fastest lookup.
_TRANSITIONS: list[tuple[int, bytes] | None] = [None] * ((_FAILED + 1) << 8)
_ACCEPTING_SHIFTED = frozenset(state << 8 for state in _ACCEPTING)


def _transition(key: int) -> tuple[int, bytes]:
    """Walk the 8 bits of ``key``'s byte down the tree from ``key``'s state; remember it."""
    node = key >> 8
    byte = key & 0xFF
    out = bytearray()
    if node != _FAILED:
        for shift in range(7, -1, -1):
            child = _CHILDREN[node][(byte >> shift) & 1]
            if child < 0:
                symbol = ~child
                if symbol == _EOS:  # RFC 7541 §5.2: EOS in a string is an error
                    node = _FAILED
                    break
                out.append(symbol)
                node = 0
            else:
                node = child
    value = (node << 8, bytes(out))
    _TRANSITIONS[key] = value
    return value


def huffman_decode(data: bytes) -> bytes:
    """Decode a Huffman-coded HPACK string; :class:`HeaderDecodingError` if it holds EOS,
    ends in padding longer than 7 bits, or padding that is not all 1s."""
    transitions = _TRANSITIONS
    state = 0
    out: list[bytes] = []
    append = out.append
    for byte in data:
        state, emitted = transitions[state | byte] or _transition(state | byte)
        append(emitted)
    if state not in _ACCEPTING_SHIFTED:
        raise HeaderDecodingError("invalid Huffman string (EOS, or bad padding)")
    return b"".join(out)


# --- the decoder ---------------------------------------------------------------------------------


class HeaderDecoder:
    """Decodes the header blocks of one HTTP/2 connection, in the order received (including
    blocks for streams we no longer care about: the dynamic table must not drift).

    :param max_header_list_size: our SETTINGS_MAX_HEADER_LIST_SIZE: a decoded list larger than
        this (RFC 9113 §6.5.2 sizes) raises :class:`HeaderListTooLargeError`.
    :param max_allowed_table_size: our SETTINGS_HEADER_TABLE_SIZE as the peer has acknowledged
        it: the largest dynamic table the peer's encoder may use (RFC 7541 §4.2). Set
        :attr:`max_allowed_table_size` when our SETTINGS change is acknowledged.
    """

    __slots__ = (
        "_entries",
        "_size",
        "_table_size",
        "max_allowed_table_size",
        "max_header_list_size",
    )

    def __init__(
        self, max_header_list_size: int = 1 << 16, max_allowed_table_size: int = 4096
    ) -> None:
        self.max_header_list_size = max_header_list_size
        self.max_allowed_table_size = max_allowed_table_size
        #: The dynamic table, newest first, and its size (RFC 7541 §4.1).
        self._entries: deque[tuple[bytes, bytes]] = deque()
        self._size = 0
        #: The maximum size the encoder set (its last size update; the default 4096 at first).
        self._table_size = 4096

    @property
    def table_size(self) -> int:
        """The dynamic table's maximum size as the encoder last set it."""
        return self._table_size

    @property
    def entries(self) -> list[tuple[bytes, bytes]]:
        """The dynamic table, newest first (for tests and debugging)."""
        return list(self._entries)

    def decode(self, block: bytes) -> list[tuple[bytes, bytes]]:
        """The ``(name, value)`` fields of one complete header block, in order."""
        # This runs for every answer: the common cases (static :status, a dynamic-table name,
        # one insertion) are inlined rather than calls to _field/_add.
        headers: list[tuple[bytes, bytes]] = []
        list_size = 0
        limit = self.max_header_list_size
        entries = self._entries
        pos = 0
        end = len(block)
        while pos < end:
            first = block[pos]
            pos += 1
            if first & 0x80:  # §6.1 indexed field
                index = first & 0x7F
                if index == 0x7F:
                    index, pos = _integer(block, pos, index)
                field = STATIC_TABLE[index - 1] if 0 < index <= _STATIC_LEN else self._field(index)
            elif first & 0xE0 == 0x20:  # §6.3 dynamic table size update
                if headers:
                    raise HeaderDecodingError("table size update after a header field")
                size = first & 0x1F
                if size == 0x1F:
                    size, pos = _integer(block, pos, size)
                if size > self.max_allowed_table_size:
                    raise HeaderDecodingError(
                        f"table size update to {size}, above the {self.max_allowed_table_size}"
                        " we allow"
                    )
                self._table_size = size
                self._evict(size)
                continue
            else:  # §6.2.1 with incremental indexing (01), §6.2.2/§6.2.3 without (000x)
                indexing = first & 0x40
                mask = 0x3F if indexing else 0x0F
                index = first & mask
                if index == mask:
                    index, pos = _integer(block, pos, index)
                if index:
                    name = self._field(index)[0]
                else:
                    name, pos = _string(block, pos)
                value, pos = _string(block, pos)
                field = (name, value)
                if indexing:
                    size = len(name) + len(value) + ENTRY_OVERHEAD
                    if size > self._table_size:  # §4.4: a larger entry empties the table
                        entries.clear()
                        self._size = 0
                    else:
                        entries.appendleft(field)
                        self._size += size
                        if self._size > self._table_size:
                            self._evict(self._table_size)
            headers.append(field)
            list_size += len(field[0]) + len(field[1]) + ENTRY_OVERHEAD
            if list_size > limit:
                raise HeaderListTooLargeError(f"header list larger than {limit} bytes")
        if self._table_size > self.max_allowed_table_size:
            # Our limit shrank (SETTINGS acknowledged) and this block did not shrink the table.
            raise HeaderDecodingError(
                f"the encoder's table size {self._table_size} is above the "
                f"{self.max_allowed_table_size} we allow"
            )
        return headers

    def _field(self, index: int) -> tuple[bytes, bytes]:
        if index <= _STATIC_LEN:
            if index == 0:
                raise HeaderDecodingError("index 0")
            return STATIC_TABLE[index - 1]
        try:
            return self._entries[index - _FIRST_DYNAMIC]
        except IndexError:
            raise HeaderDecodingError(f"index {index} is beyond the tables") from None

    def _evict(self, limit: int) -> None:
        entries = self._entries
        size = self._size
        while size > limit:
            name, value = entries.pop()
            size -= len(name) + len(value) + ENTRY_OVERHEAD
        self._size = size


def _integer(block: bytes, pos: int, value: int) -> tuple[int, int]:
    """The rest of a prefix integer (§5.1) whose prefix was all 1s (``value``)."""
    shift = 0
    end = len(block)
    while True:
        if pos >= end:
            raise HeaderDecodingError("truncated integer")
        byte = block[pos]
        pos += 1
        value += (byte & 0x7F) << shift
        if value > MAX_INTEGER:
            raise HeaderDecodingError("integer too large")
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:  # an over-long encoding (zero-padding continuation bytes)
            raise HeaderDecodingError("integer encoding too long")


def _string(block: bytes, pos: int) -> tuple[bytes, int]:
    """A string literal (§5.2) at ``pos``: its bytes and the position after it."""
    if pos >= len(block):
        raise HeaderDecodingError("truncated string")
    first = block[pos]
    length = first & 0x7F
    pos += 1
    if length == 0x7F:
        length, pos = _integer(block, pos, length)
    end = pos + length
    if end > len(block):
        raise HeaderDecodingError("truncated string")
    if first & 0x80:
        return huffman_decode(block[pos:end]), end
    return block[pos:end], end
