"""The HPACK response decoder (``txapns.core.http2.decoder``), with ``hpack`` as its oracle.

Any header block ``hpack.Encoder`` produces, through any sequence of dynamic table size
changes, insertions and evictions, must decode to the same list as ``hpack.Decoder`` gives and
leave the same dynamic table. Golden bytes are from RFC 7541 Appendix C.
"""

from __future__ import annotations

import hpack
from hpack.huffman import HuffmanEncoder
from hpack.huffman_constants import REQUEST_CODES, REQUEST_CODES_LENGTH
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from txapns.core.http2.decoder import (
    _ACCEPTING_SHIFTED,
    _TRANSITIONS,
    HeaderDecoder,
    HeaderDecodingError,
    HeaderListTooLargeError,
    _build_tree,
    _transition,
    huffman_decode,
)

_huffman = HuffmanEncoder(REQUEST_CODES, REQUEST_CODES_LENGTH)

# Names and values that make encoders index, reuse and evict: a few recurring ones (APNs'),
# static-table names, and arbitrary bytes.
_names = st.one_of(
    st.sampled_from(
        [b"apns-id", b"apns-unique-id", b"content-type", b"content-length", b":status", b"x-a"]
    ),
    st.binary(min_size=1, max_size=20),
)
_values = st.one_of(
    st.sampled_from([b"200", b"400", b"application/json", b"30", b""]),
    st.uuids().map(lambda u: str(u).upper().encode()),
    st.binary(max_size=300),
)
_field = st.tuples(_names, _values, st.booleans())  # (name, value, sensitive)
_block = st.lists(_field, max_size=8)
_step = st.tuples(
    _block,
    st.booleans(),  # huffman
    st.none() | st.sampled_from([0, 1, 40, 100, 256, 1000, 4096]),  # a table size change
)


_STATUS = (b":status", b"200")


def _rest(value: int) -> bytes:
    """The continuation bytes of a prefix integer (RFC 7541 §5.1) for ``value`` past the
    prefix."""
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _plain(fields: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(bytes(n), bytes(v)) for n, v in fields]


class Oracle(SynchronousTestCase):
    @settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(steps=st.lists(_step, min_size=1, max_size=12), allowed=st.sampled_from([4096, 8192]))
    def test_any_encoded_sequence_decodes_like_hpack(
        self, steps: list[tuple[list[tuple[bytes, bytes, bool]], bool, int | None]], allowed: int
    ) -> None:
        encoder = hpack.Encoder()
        oracle = hpack.Decoder()
        oracle.max_allowed_table_size = allowed
        ours = HeaderDecoder(max_header_list_size=1 << 20, max_allowed_table_size=allowed)
        for fields, huffman, size in steps:
            if size is not None:
                encoder.header_table_size = size
            block = encoder.encode([(n, v, s) for n, v, s in fields], huffman=huffman)
            expected = _plain(oracle.decode(block, raw=True))
            self.assertEqual(ours.decode(block), expected)
            self.assertEqual(expected, [(n, v) for n, v, _ in fields])
            self.assertEqual(ours.entries, list(oracle.header_table.dynamic_entries))
            self.assertEqual(ours.table_size, oracle.header_table_size)

    def test_apns_answers_churn_the_table(self) -> None:
        # What a server's encoder does with APNs answers: index every new apns-id, evicting.
        encoder = hpack.Encoder()
        ours = HeaderDecoder()
        for i in range(500):
            fields = [
                (b":status", b"200"),
                (b"apns-id", f"{i:08X}-AAAA-BBBB-CCCC-{i:012X}".encode()),
            ]
            if i % 5 == 0:
                fields = [
                    (b":status", b"400"),
                    fields[1],
                    (b"content-type", b"application/json"),
                    (b"content-length", b"31"),
                ]
            self.assertEqual(ours.decode(encoder.encode(fields)), fields)
        self.assertLessEqual(sum(len(n) + len(v) + 32 for n, v in ours.entries), 4096)
        self.assertGreater(len(ours.entries), 10)

    @settings(max_examples=500, deadline=None)
    @given(data=st.binary(max_size=64), allowed=st.sampled_from([0, 100, 4096]))
    def test_garbage_raises_only_typed_errors_and_never_disagrees(
        self, data: bytes, allowed: int
    ) -> None:
        ours = HeaderDecoder(max_allowed_table_size=allowed)
        oracle = hpack.Decoder()
        oracle.max_allowed_table_size = allowed
        try:
            got = ours.decode(data)
        except HeaderDecodingError:
            return
        # Whatever we accept, hpack accepts the same way (we may be stricter, never looser).
        self.assertEqual(_plain(oracle.decode(data, raw=True)), got)
        self.assertEqual(ours.entries, list(oracle.header_table.dynamic_entries))


class Huffman(SynchronousTestCase):
    def test_rfc7541_appendix_c4_and_c6_strings(self) -> None:
        cases = {
            "f1e3c2e5f23a6ba0ab90f4ff": b"www.example.com",
            "a8eb10649cbf": b"no-cache",
            "25a849e95ba97d7f": b"custom-key",
            "25a849e95bb8e8b4bf": b"custom-value",
            "6402": b"302",
            "aec3771a4b": b"private",
            "9d29ad171863c78f0b97c8e9ae82ae43d3": b"https://www.example.com",
        }
        for hexed, text in cases.items():
            self.assertEqual(huffman_decode(bytes.fromhex(hexed)), text)

    @given(st.binary(max_size=200))
    def test_round_trip_with_hpacks_encoder(self, text: bytes) -> None:
        self.assertEqual(huffman_decode(_huffman.encode(text)), text)

    def test_bad_strings(self) -> None:
        eos = bytes.fromhex("ffffffff")  # 30 ones (EOS) and 2 more
        for bad in (
            eos,
            _huffman.encode(b"a") + b"\xff",  # 8 or more bits of padding
            bytes([0b00011_000]),  # 'a' (00011) padded with 0s, not 1s
            b"\xfe",  # 7 ones, then a 0: padding not all ones
        ):
            self.assertRaises(HeaderDecodingError, huffman_decode, bad)
        self.assertEqual(huffman_decode(b""), b"")
        self.assertEqual(huffman_decode(bytes([0b00011_111])), b"a")


class Limits(SynchronousTestCase):
    def test_errors(self) -> None:
        # The message goes into our GOAWAY's debug data and the log: each says what was wrong.
        beyond = "index {} is beyond the tables"
        for block, message in [
            (b"\x80", "index 0"),
            (b"\xbe", beyond.format(62)),
            (b"\xff\xff\xff\xff\xff\xff\x01", "integer too large"),
            (b"\xff" + _rest(0xFFFFFFFF - 127 + 1), "integer too large"),
            (b"\xff" + _rest(0xFFFFFFFF - 127), beyond.format(0xFFFFFFFF)),  # the largest
            (b"\xff\x80\x80\x80\x80\x80", "integer encoding too long"),  # 5 padding bytes
            (b"\xff\x80\x80\x80\x80\x00", beyond.format(127)),  # 4: still allowed
            (b"\x00\x05ab", "truncated string"),
            (b"\x00", "truncated string"),  # the name
            (b"\x7f", "truncated integer"),
            (b"\x88\x20", "table size update after a header field"),
            (b"\x3f\xe2\x1f", "table size update to 4097, above the 4096 we allow"),
            (b"\x00\x81\xff\x00", "invalid Huffman string (EOS, or bad padding)"),
        ]:
            with self.assertRaises(HeaderDecodingError) as cm:
                HeaderDecoder().decode(block)
            self.assertEqual(str(cm.exception), message, block)

    def test_integers_of_three_bytes(self) -> None:
        # A value of 20,000 bytes: its length is 127 + 19,873, three 7-bit groups.
        value = b"v" * 20_000
        block = b"\x00\x01a\x7f" + _rest(20_000 - 127) + value
        self.assertEqual(len(_rest(20_000 - 127)), 3)
        self.assertEqual(HeaderDecoder().decode(block), [(b"a", value)])

    def test_index_127_of_a_full_table(self) -> None:
        # 66 dynamic entries: index 127 (a prefix of all 1s and a 0 continuation byte) is
        # the oldest.
        decoder = HeaderDecoder()
        decoder.decode(b"".join(b"\x40\x01%c\x01v" % (0x41 + i % 26) for i in range(66)))
        self.assertEqual(decoder.decode(b"\xff\x00\x88"), [(b"A", b"v"), (b":status", b"200")])

    def test_list_size_counts_every_field_up_to_the_limit(self) -> None:
        # ":status: 200" counts 7 + 3 + 32 = 42 bytes (RFC 9113 §6.5.2).
        self.assertEqual(HeaderDecoder(max_header_list_size=42).decode(b"\x88"), [_STATUS])
        self.assertEqual(HeaderDecoder(max_header_list_size=84).decode(b"\x88\x88"), [_STATUS] * 2)
        for limit, block in [(41, b"\x88"), (83, b"\x88\x88")]:
            with self.assertRaises(HeaderListTooLargeError) as cm:
                HeaderDecoder(max_header_list_size=limit).decode(block)
            self.assertEqual(str(cm.exception), f"header list larger than {limit} bytes")

    def test_limit_lowered_without_a_size_update_message(self) -> None:
        decoder = HeaderDecoder()
        decoder.max_allowed_table_size = 100
        with self.assertRaises(HeaderDecodingError) as cm:
            decoder.decode(b"\x88")
        self.assertEqual(
            str(cm.exception), "the encoder's table size 4096 is above the 100 we allow"
        )

    def test_entry_exactly_the_table_size_fits(self) -> None:
        decoder = HeaderDecoder()
        decoder.decode(b"\x3f\x09" + b"\x40\x01a\x07bcdefgh")  # size 40; 1 + 7 + 32 = 40
        self.assertEqual(decoder.entries, [(b"a", b"bcdefgh")])

    def test_header_list_size(self) -> None:
        decoder = HeaderDecoder(max_header_list_size=100)
        block = hpack.Encoder().encode([(b"x", b"y" * 66)], huffman=False)  # 1 + 66 + 32 = 99
        self.assertEqual(decoder.decode(block), [(b"x", b"y" * 66)])
        block = hpack.Encoder().encode([(b"x", b"y" * 68)], huffman=False)
        self.assertRaises(
            HeaderListTooLargeError, HeaderDecoder(max_header_list_size=100).decode, block
        )

    def test_lowered_limit_must_be_honoured_by_the_next_block(self) -> None:
        encoder = hpack.Encoder()
        decoder = HeaderDecoder()
        decoder.decode(encoder.encode([(b"x-a", b"1" * 100)]))
        decoder.max_allowed_table_size = 50  # our SETTINGS_HEADER_TABLE_SIZE=50 was ACKed
        self.assertRaises(HeaderDecodingError, decoder.decode, b"\x88")  # no size update
        encoder = hpack.Encoder()
        decoder = HeaderDecoder()
        decoder.decode(encoder.encode([(b"x-a", b"1" * 100)]))
        decoder.max_allowed_table_size = 50
        encoder.header_table_size = 50
        self.assertEqual(
            decoder.decode(encoder.encode([(b":status", b"200")])), [(b":status", b"200")]
        )
        self.assertEqual((decoder.table_size, decoder.entries), (50, []))

    def test_entry_larger_than_the_table_empties_it(self) -> None:
        decoder = HeaderDecoder()
        decoder.decode(b"\x3f\x45" + b"\x40\x01a\x01b")  # size 100, then (a, b): 34 bytes
        self.assertEqual(decoder.entries, [(b"a", b"b")])
        decoder.decode(b"\x40\x01a\x7f\x00" + b"v" * 127)  # 160 bytes > 100
        self.assertEqual(decoder.entries, [])

    def test_size_update_evicts_oldest_first(self) -> None:
        decoder = HeaderDecoder()
        decoder.decode(b"\x40\x01a\x01b" + b"\x40\x01c\x01d")  # 34 bytes each, (c, d) newest
        decoder.decode(b"\x3f\x0b")  # size 42: only the newest fits
        self.assertEqual(decoder.entries, [(b"c", b"d")])
        self.assertEqual(decoder.decode(b"\xbe"), [(b"c", b"d")])


class TreeAndTransitions(SynchronousTestCase):
    """The Huffman code tree and the byte-at-a-time transitions, built afresh: the module
    builds the tree at import and caches transitions, so the decoding tests above would not
    notice a builder that goes wrong after that (as mutation testing showed)."""

    def test_the_code_tree(self) -> None:
        children, depth, ones = _build_tree()
        # 257 leaves (256 bytes and EOS) of a complete code: 256 inner nodes.
        self.assertEqual((len(children), len(depth), len(ones)), (256, 256, 256))
        self.assertEqual((depth[0], ones[0]), (0, True))
        for symbol, (code, length) in enumerate(
            zip(REQUEST_CODES, REQUEST_CODES_LENGTH, strict=True)
        ):
            node = 0
            for i in range(length - 1, 0, -1):
                node = children[node][(code >> i) & 1]
                self.assertGreater(node, 0)
                self.assertEqual(depth[node], length - i)
                self.assertEqual(ones[node], code >> i == (1 << (length - i)) - 1)
            self.assertEqual(children[node][code & 1], ~symbol)

    def walk(self, data: bytes) -> tuple[int, bytes]:
        state, out = 0, b""
        for byte in data:
            key = state | byte
            state, emitted = _transition(key)
            self.assertEqual(_TRANSITIONS[key], (state, emitted))  # remembered
            out += emitted
        return state, out

    def test_transitions_decode_every_byte(self) -> None:
        for text in [bytes([b]) for b in range(256)] + [b"no-cache", b"a" * 9, bytes(range(256))]:
            state, out = self.walk(_huffman.encode(text))
            self.assertEqual(out, text)
            self.assertIn(state, _ACCEPTING_SHIFTED)

    def test_huffman_decode_fills_an_empty_cache(self) -> None:
        # What a new process starts with: no transition computed yet.
        saved = _TRANSITIONS[:]
        _TRANSITIONS[:] = [None] * len(saved)
        try:
            text = bytes(range(256))
            self.assertEqual(huffman_decode(_huffman.encode(text)), text)
        finally:
            _TRANSITIONS[:] = saved

    def test_transitions_refuse_eos_and_long_padding(self) -> None:
        failed = len(_build_tree()[0]) << 8
        self.assertEqual(self.walk(b"\xff\xff\xff\xfc"), (failed, b""))  # EOS: 30 ones
        self.assertEqual(self.walk(b"\xff\xff\xff\xff\x00"), (failed, b""))  # and stays failed
        state, out = self.walk(b"\xff")  # 8 bits of padding
        self.assertEqual(out, b"")
        self.assertNotIn(state, _ACCEPTING_SHIFTED)
