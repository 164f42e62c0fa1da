"""The HPACK request encoder, the edges mutation testing found unpinned (``tools/mutation.py
core/http2/headers.py``): integers at their continuation boundaries, a ``:path`` or
``apns-id`` of exactly 127 bytes (where the one-byte length prefix ends), templates rebuilt
with another ``authorization`` keeping every other field, and the exact refusal messages.
``hpack`` is the decoding oracle.
"""

from __future__ import annotations

import hpack
from hypothesis import given
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.errors import InvalidFieldError
from txapns.core.http2.headers import (
    HeaderBlockTemplate,
    encode_header_block,
    encode_integer,
)


def decode(block: bytes) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in hpack.Decoder().decode(block, raw=True)]


class IntegerTests(SynchronousTestCase):
    def test_zero_and_continuation_boundaries(self) -> None:
        self.assertEqual(encode_integer(0, 7), b"\x00")
        self.assertEqual(encode_integer(0, 4, 0x10), b"\x10")
        # 127 + 128: the remainder is exactly 0x80, which needs a continuation byte.
        self.assertEqual(encode_integer(255, 7), b"\x7f\x80\x01")
        self.assertEqual(encode_integer(127 + 127, 7), b"\x7f\x7f")
        self.assertEqual(encode_integer(127 + 129, 7), b"\x7f\x81\x01")

    @given(st.integers(0, 2**32), st.integers(1, 8))
    def test_decodes_back(self, value: int, prefix: int) -> None:
        data = encode_integer(value, prefix)
        self.assertEqual(hpack.hpack.decode_integer(data, prefix), (value, len(data)))

    def test_negative_message(self) -> None:
        with self.assertRaises(ValueError) as cm:
            encode_integer(-1, 7)
        self.assertEqual(str(cm.exception), "HPACK integers are non-negative")


class TemplateTests(SynchronousTestCase):
    FULL = {
        "topic": "com.example.app",
        "push_type": "background",
        "priority": 5,
        "method": "PUT",
        "scheme": "http",
        "extra_headers": (("apns-x", "y"),),
    }

    def test_with_authorization_keeps_every_other_field(self) -> None:
        template = HeaderBlockTemplate("api.push.apple.com", authorization="bearer a", **self.FULL)  # type: ignore[arg-type]
        renewed = template.with_authorization("bearer b")
        fresh = HeaderBlockTemplate("api.push.apple.com", authorization="bearer b", **self.FULL)  # type: ignore[arg-type]
        self.assertEqual(renewed.encode(b"/3/device/00"), fresh.encode(b"/3/device/00"))
        self.assertEqual(
            (renewed.priority, renewed.authorization, renewed.push_type),
            (5, "bearer b", "background"),
        )

    def test_repr_says_whether_authorization_is_set(self) -> None:
        self.assertEqual(
            repr(HeaderBlockTemplate("h", topic="t", priority=10, authorization="bearer x")),
            "<HeaderBlockTemplate authority=h topic=t push_type=None priority=10"
            " authorization=set>",
        )
        self.assertEqual(
            repr(HeaderBlockTemplate("h")),
            "<HeaderBlockTemplate authority=h topic=None push_type=None priority=None"
            " authorization=none>",
        )

    def test_lengths_around_the_one_byte_prefix(self) -> None:
        template = HeaderBlockTemplate("api.push.apple.com")
        for n in (125, 126, 127, 128, 300):
            path = b"/" + b"p" * (n - 1)
            apns_id = "i" * n
            collapse = "c" * n
            block = template.encode(path, apns_id=apns_id, collapse_id=collapse)
            fields = dict(decode(block))
            self.assertEqual(fields[b":path"], path)
            self.assertEqual(fields[b"apns-id"], apns_id.encode())
            self.assertEqual(fields[b"apns-collapse-id"], collapse.encode())

    def test_refusal_messages(self) -> None:
        template = HeaderBlockTemplate("api.push.apple.com")
        for call, message in [
            (lambda: template.encode(b"x"), "invalid :path b'x'"),
            (lambda: template.encode(b"/", apns_id="a\r\n"), "invalid apns-id b'a\\r\\n'"),
            (
                lambda: template.encode(b"/", collapse_id=" c"),
                "invalid apns-collapse-id b' c'",
            ),
            (
                lambda: HeaderBlockTemplate("h", extra_headers=[(":path", "/")]),
                "extra_headers cannot carry pseudo-header fields",
            ),
            (
                lambda: encode_header_block([("Bad", "v")]),
                "invalid header name b'Bad' (lower-case token expected)",
            ),
            (
                lambda: encode_header_block([("te", "trailers")]),
                "connection-specific header b'te' is forbidden in HTTP/2",
            ),
            (
                lambda: encode_header_block([(":status", "200")]),
                "unknown request pseudo-header b':status'",
            ),
            (
                lambda: encode_header_block([("x", "v ")]),
                "header b'x': value has CR, LF, NUL or surrounding whitespace",
            ),
            (
                lambda: encode_header_block([("x", "v"), (":path", "/")]),
                "pseudo-header fields must come before the others",
            ),
        ]:
            with self.assertRaises(InvalidFieldError) as cm:
                call()
            self.assertEqual(str(cm.exception), message)
