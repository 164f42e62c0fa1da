"""A scriptable fake of Apple's legacy binary gateway (port 2195) and feedback service (2196).

Use it to test code that speaks the binary provider protocol, txapns's own client or yours,
without Apple. It runs over any Twisted transport: in memory (``StringTransport``,
``twisted.test.iosim``) or a real socket, plain or TLS (see :func:`listen_gateway` and
:func:`listen_feedback`).

The gateway has its own frame parser, deliberately independent of ``txapns.core.binary``, so
an encoder bug cannot hide behind a decoder with the same bug. It accepts the three
notification formats:

* command 0 (simple): ``0 | tokenLen:2 | token | payloadLen:2 | payload``;
* command 1 (enhanced): ``1 | identifier:4 | expiry:4 | tokenLen:2 | token | payloadLen:2 |
  payload``;
* command 2 (framed): ``2 | frameLen:4 | items…``, each item ``itemId:1 | itemLen:2 | data``
  with items 1 token, 2 payload, 3 identifier (4 bytes), 4 expiry (4 bytes), 5 priority
  (1 byte).

It validates each notification as Apple did, in this order:

* 128 (protocol error): unknown command; a command-2 frame longer than ``max_frame_length``;
  an item running past the end of its frame; an unknown or repeated item id; an identifier
  or expiry item not 4 bytes long; a priority item not 1 byte long;
* 2: no token (or an empty one);
* 5: a token not ``token_length`` (32) bytes long;
* 4: no payload (or an empty one);
* 7: a payload longer than ``max_payload`` (2048) bytes;
* the scripted status: :meth:`FakeGateway.reject_token`,
  :meth:`~FakeGateway.reject_tokens_with_prefix`, then :meth:`~FakeGateway.reject_nth`.

On the first bad notification of a connection it writes the 6-byte error response
``8 | status:1 | identifier:4`` (identifier 0 when the frame did not carry one, or when the
stream could not be framed at all), closes its side, and counts every later frame received on
that connection in :attr:`FakeGateway.discarded` without delivering it, as Apple did. A bad
command-0 notification closes the connection without any response (the simple format has no
identifier to name). A good notification says nothing and is appended to
:attr:`FakeGateway.delivered`.

:class:`FakeGateway` is itself the server factory (a
:class:`~twisted.internet.protocol.ServerFactory` building one :class:`GatewayProtocol` per
connection): one object holds the script, the records and the factory role, so a test
configures and inspects the same object it listens with. :class:`FakeFeedbackService` is the
same for the feedback service.

Timed behaviour (stalls, idle cut, delayed or spread error responses) uses the clock given to
the constructor: a :class:`twisted.internet.task.Clock` in unit tests, the reactor on real
sockets (:func:`listen_gateway` supplies the reactor when no clock was given). Every timer is
cancelled when its connection is lost or when :meth:`FakeGateway.stop` is called.

Example::

    gateway = FakeGateway(clock)
    gateway.reject_token(bad_token)          # status 8 for this token
    gateway.shutdown_after = 100             # status 10 after 100 accepted per connection
    port = listen_gateway(reactor, gateway, tls_options=server_tls_options(make_test_pki()))
    ...                                      # run the client against port.getHost().port
    assert [n.identifier for n in gateway.delivered] == expected
"""

from __future__ import annotations

import random
import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, cast
from typing import Protocol as TypingProtocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IListeningPort,
    INegotiated,
    IOpenSSLContextFactory,
    IReactorSSL,
    IReactorTCP,
    IReactorTime,
    ISSLTransport,
)
from twisted.internet.protocol import Protocol, ServerFactory, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txapns.core.notification import shorten

if TYPE_CHECKING:
    from cryptography.x509 import Certificate

__all__ = [
    "COMMAND_ENHANCED",
    "COMMAND_ERROR",
    "COMMAND_FRAME",
    "COMMAND_SIMPLE",
    "STATUS_INVALID_PAYLOAD_SIZE",
    "STATUS_INVALID_TOKEN",
    "STATUS_INVALID_TOKEN_SIZE",
    "STATUS_MISSING_PAYLOAD",
    "STATUS_MISSING_TOKEN",
    "STATUS_PROCESSING_ERROR",
    "STATUS_PROTOCOL_ERROR",
    "STATUS_SHUTDOWN",
    "STATUS_UNKNOWN",
    "DeliveredNotification",
    "FakeFeedbackService",
    "FakeGateway",
    "FeedbackProtocol",
    "GatewayProtocol",
    "Rejection",
    "encode_feedback_tuple",
    "listen_feedback",
    "listen_gateway",
]

COMMAND_SIMPLE: Final = 0
COMMAND_ENHANCED: Final = 1
COMMAND_FRAME: Final = 2
COMMAND_ERROR: Final = 8

STATUS_PROCESSING_ERROR: Final = 1
STATUS_MISSING_TOKEN: Final = 2
STATUS_MISSING_PAYLOAD: Final = 4
STATUS_INVALID_TOKEN_SIZE: Final = 5
STATUS_INVALID_PAYLOAD_SIZE: Final = 7
STATUS_INVALID_TOKEN: Final = 8
STATUS_SHUTDOWN: Final = 10
STATUS_PROTOCOL_ERROR: Final = 128
STATUS_UNKNOWN: Final = 255

_ITEM_TOKEN: Final = 1
_ITEM_PAYLOAD: Final = 2
_ITEM_IDENTIFIER: Final = 3
_ITEM_EXPIRY: Final = 4
_ITEM_PRIORITY: Final = 5
_ITEM_LENGTHS: Final = {_ITEM_IDENTIFIER: 4, _ITEM_EXPIRY: 4, _ITEM_PRIORITY: 1}

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_ENHANCED_HEADER = struct.Struct(">BIIH")  # command, identifier, expiry, token length
_ERROR = struct.Struct(">BBI")
_FEEDBACK_HEADER = struct.Struct(">IH")

_log = Logger(namespace="txapns.testing.binary_gateway")


# --- records ---------------------------------------------------------------------------------


@dataclass(frozen=True, repr=False)
class DeliveredNotification:
    """One notification the fake gateway accepted (or, inside a :class:`Rejection`, parsed).

    ``identifier`` is 0 for command 0; ``expiry`` is ``None`` for command 0 and when a
    command-2 frame has no expiry item; ``priority`` is ``None`` unless a command-2 frame had a
    priority item. ``connection`` is the serial number (1, 2, …) of the connection it came on.
    """

    token: bytes
    payload: bytes
    identifier: int
    expiry: int | None
    priority: int | None
    command: int
    connection: int

    def __repr__(self) -> str:
        # Never the full token: reprs end up in test output and logs.
        return (
            f"DeliveredNotification(token={shorten(self.token)!r}, payload={len(self.payload)}B,"
            f" identifier={self.identifier}, expiry={self.expiry}, priority={self.priority},"
            f" command={self.command}, connection={self.connection})"
        )


@dataclass(frozen=True)
class Rejection:
    """A notification the gateway refused, with the status it answered (or would have).

    ``identifier`` is the one the notification carried (0 when it carried none), whatever
    :attr:`FakeGateway.report_id_zero` made the gateway send. ``notification`` is what could be
    parsed of it: ``None`` for a protocol error (status 128); otherwise token and payload may
    be empty bytes when missing.
    """

    status: int
    identifier: int
    command: int | None
    connection: int
    notification: DeliveredNotification | None

    @property
    def token(self) -> bytes | None:
        return self.notification.token if self.notification is not None else None


# --- the frame parser (independent of txapns.core.binary on purpose) ---------------------------


@dataclass(frozen=True, slots=True)
class _Frame:
    """One unit cut from the stream: a notification, or the unframeable rest of the stream."""

    #: Bytes it takes; ``None`` = the stream cannot be framed from here (unknown command,
    #: oversized frame): everything left is garbage.
    length: int | None
    command: int | None
    identifier: int = 0
    token: bytes | None = None
    payload: bytes | None = None
    expiry: int | None = None
    priority: int | None = None
    #: 0 when the structure is sound, else 128.
    structure_status: int = 0


def _cut_frame(buf: bytearray, pos: int, max_frame_length: int) -> _Frame | None:
    """Cut the frame starting at ``buf[pos]``; ``None`` if more bytes are needed."""
    available = len(buf) - pos
    if available < 1:
        return None
    command = buf[pos]
    if command == COMMAND_SIMPLE:
        if available < 3:
            return None
        (token_len,) = _U16.unpack_from(buf, pos + 1)
        if available < 3 + token_len + 2:
            return None
        (payload_len,) = _U16.unpack_from(buf, pos + 3 + token_len)
        total = 3 + token_len + 2 + payload_len
        if available < total:
            return None
        token_at = pos + 3
        payload_at = token_at + token_len + 2
        return _Frame(
            length=total,
            command=COMMAND_SIMPLE,
            token=bytes(buf[token_at : token_at + token_len]),
            payload=bytes(buf[payload_at : payload_at + payload_len]),
        )
    if command == COMMAND_ENHANCED:
        head = _ENHANCED_HEADER.size
        if available < head:
            return None
        _, identifier, expiry, token_len = _ENHANCED_HEADER.unpack_from(buf, pos)
        if available < head + token_len + 2:
            return None
        (payload_len,) = _U16.unpack_from(buf, pos + head + token_len)
        total = head + token_len + 2 + payload_len
        if available < total:
            return None
        token_at = pos + head
        payload_at = token_at + token_len + 2
        return _Frame(
            length=total,
            command=COMMAND_ENHANCED,
            identifier=identifier,
            expiry=expiry,
            token=bytes(buf[token_at : token_at + token_len]),
            payload=bytes(buf[payload_at : payload_at + payload_len]),
        )
    if command == COMMAND_FRAME:
        if available < 5:
            return None
        (frame_len,) = _U32.unpack_from(buf, pos + 1)
        if frame_len > max_frame_length:
            return _Frame(length=None, command=COMMAND_FRAME, structure_status=128)
        if available < 5 + frame_len:
            return None
        return _parse_items(buf, pos + 5, pos + 5 + frame_len, 5 + frame_len)
    return _Frame(length=None, command=None, structure_status=STATUS_PROTOCOL_ERROR)


def _parse_items(buf: bytearray, start: int, end: int, total: int) -> _Frame:
    items: dict[int, bytes] = {}
    sound = True
    at = start
    while at < end:
        if end - at < 3:
            sound = False
            break
        item_id = buf[at]
        (item_len,) = _U16.unpack_from(buf, at + 1)
        at += 3
        if at + item_len > end:
            sound = False
            break
        data = bytes(buf[at : at + item_len])
        at += item_len
        if item_id in items or not _ITEM_TOKEN <= item_id <= _ITEM_PRIORITY:
            sound = False
            continue
        items[item_id] = data
    for item_id, length in _ITEM_LENGTHS.items():
        if item_id in items and len(items[item_id]) != length:
            sound = False
            del items[item_id]
    identifier = _U32.unpack(items[_ITEM_IDENTIFIER])[0] if _ITEM_IDENTIFIER in items else 0
    expiry = _U32.unpack(items[_ITEM_EXPIRY])[0] if _ITEM_EXPIRY in items else None
    priority = items[_ITEM_PRIORITY][0] if _ITEM_PRIORITY in items else None
    return _Frame(
        length=total,
        command=COMMAND_FRAME,
        identifier=identifier,
        token=items.get(_ITEM_TOKEN),
        payload=items.get(_ITEM_PAYLOAD),
        expiry=expiry,
        priority=priority,
        structure_status=0 if sound else STATUS_PROTOCOL_ERROR,
    )


# --- helpers shared by both fakes ------------------------------------------------------------


def _split(data: bytes, sizes: Sequence[int]) -> list[bytes]:
    """Cut *data* into pieces of *sizes* (repeated), the last piece taking what is left."""
    if not sizes or any(size < 1 for size in sizes):
        raise ValueError(f"split sizes must be positive, not {tuple(sizes)!r}")
    pieces: list[bytes] = []
    at = 0
    index = 0
    while at < len(data):
        size = sizes[index % len(sizes)]
        pieces.append(data[at : at + size])
        at += size
        index += 1
    return pieces


def _is_tls(transport: object) -> bool:
    return ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)


def _peer_certificate(transport: object) -> Certificate | None:
    get = getattr(transport, "getPeerCertificate", None)
    if get is None:
        return None
    cert = get()
    if cert is None:
        return None
    converted: Certificate = cert.to_cryptography()
    return converted


class _Transport(TypingProtocol):
    """What the fakes use of a transport (TCP, TLS and the in-memory test transports)."""

    def write(self, data: bytes) -> None: ...

    def loseConnection(self) -> None: ...

    def abortConnection(self) -> None: ...


def _transport_of(protocol: Protocol) -> _Transport:
    assert protocol.transport is not None, "not connected"
    return cast(_Transport, protocol.transport)


class _Timers:
    """The delayed calls of one connection or service, cancelled together."""

    def __init__(self, clock: IReactorTime | None, owner: str) -> None:
        self.clock = clock
        self.owner = owner
        self._calls: set[IDelayedCall] = set()

    def later(self, seconds: float, f: Callable[[], object]) -> IDelayedCall:
        if self.clock is None:
            raise RuntimeError(f"{self.owner}: this option needs a clock (IReactorTime)")
        call: IDelayedCall | None = None

        def fire() -> None:
            assert call is not None
            self._calls.discard(call)
            f()

        call = self.clock.callLater(seconds, fire)
        self._calls.add(call)
        return call

    def cancel(self, call: IDelayedCall | None) -> None:
        if call is None:
            return
        if call.active():
            call.cancel()
        self._calls.discard(call)

    def cancel_all(self) -> None:
        calls, self._calls = self._calls, set()
        for call in calls:
            if call.active():
                call.cancel()

    def __len__(self) -> int:
        return len(self._calls)


def _write_pieces(
    transport: _Transport,
    pieces: list[bytes],
    timers: _Timers,
    interval: float | None,
    then: Callable[[], None],
) -> None:
    """Write *pieces* as separate writes (spaced by *interval* on the clock), then ``then()``."""
    if interval is None:
        for piece in pieces:
            transport.write(piece)
        then()
        return

    def step(index: int) -> None:
        transport.write(pieces[index])
        if index + 1 < len(pieces):
            timers.later(interval, lambda: step(index + 1))
        else:
            then()

    if pieces:
        step(0)
    else:
        then()


def _no_delay(transport: object) -> None:
    """Ask for TCP_NODELAY where the transport has it, so small writes leave one by one."""
    set_no_delay = getattr(transport, "setTcpNoDelay", None)
    if set_no_delay is not None:
        set_no_delay(True)


# --- the gateway -----------------------------------------------------------------------------


@implementer(IHandshakeListener)
class GatewayProtocol(Protocol):
    """One connection to the fake gateway. All policy and records live in :class:`FakeGateway`.

    Useful attributes for tests: ``serial`` (the connection's number), ``received`` (frames
    handled on it), ``accepted`` (notifications delivered on it), ``failed`` (an error was
    decided or the connection is being cut: later frames are discarded).
    """

    def __init__(self, gateway: FakeGateway, serial: int) -> None:
        self.gateway = gateway
        self.serial = serial
        self.received = 0
        self.accepted = 0
        self.failed = False
        self.paused = False
        self.last_accepted_identifier = 0
        self._buffer = bytearray()
        self._garbage = False
        self._closing = False
        self._lost = False
        self._handshake_pending = False
        self._timers = _Timers(gateway.clock, "FakeGateway")
        self._idle_call: IDelayedCall | None = None

    # -- connection life ----------------------------------------------------------------

    def connectionMade(self) -> None:
        gateway = self.gateway
        gateway._live.add(self)
        _log.debug("fake gateway connection {connection} made", connection=self.serial)
        if gateway.split_error is not False:
            _no_delay(self.transport)
        if _is_tls(self.transport):
            # Wait for handshakeCompleted before acting like a live gateway.
            self._handshake_pending = True
            if gateway.idle_timeout is not None:
                self._touch()
            return
        self._established()

    def handshakeCompleted(self) -> None:
        if not self._handshake_pending or self._lost:
            return
        self._handshake_pending = False
        self.gateway.peer_certificates.append(_peer_certificate(self.transport))
        self._established()

    def _established(self) -> None:
        gateway = self.gateway
        if gateway.close_after_handshake:
            self._cut("handshake", abort=False)
            return
        self._touch()
        if gateway.stall:
            self.pause_reading()
        if self._buffer:
            self._process()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._timers.cancel_all()
        self._idle_call = None
        gateway = self.gateway
        if not self._closing:
            gateway.closes.append((self.serial, "peer"))
        gateway._connection_closed(self)
        _log.debug(
            "fake gateway connection {connection} lost: {reason}",
            connection=self.serial,
            reason=reason.getErrorMessage(),
        )

    # -- reading ------------------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._lost:
            return
        if self._garbage:
            self.gateway.discarded_bytes += len(data)
            return
        self._buffer += data
        if self.paused or self._handshake_pending:
            return
        self._touch()
        self._process()

    def pause_reading(self) -> None:
        """Stop reading: pause the transport and hold anything that still arrives."""
        if self.paused or self._lost:
            return
        self.paused = True
        pause = getattr(self.transport, "pauseProducing", None)
        if pause is not None and not self._closing:
            pause()
        self._timers.cancel(self._idle_call)
        self._idle_call = None

    def resume_reading(self) -> None:
        """Read again, first handling what arrived while paused."""
        if not self.paused or self._lost:
            return
        self.paused = False
        resume = getattr(self.transport, "resumeProducing", None)
        if resume is not None and not self._closing:
            resume()
        self._touch()
        self._process()

    def _process(self) -> None:
        gateway = self.gateway
        buf = self._buffer
        pos = 0
        while not self.paused and not self._lost:
            frame = _cut_frame(buf, pos, gateway.max_frame_length)
            if frame is None:
                break
            if frame.length is None:
                # The stream cannot be framed any more: everything left is garbage.
                rest = len(buf) - pos
                pos = len(buf)
                self._garbage = True
                if self.failed:
                    gateway.discarded_bytes += rest
                else:
                    self._reject(STATUS_PROTOCOL_ERROR, frame)
                    gateway.discarded_bytes += rest
                break
            pos += frame.length
            if self.failed:
                gateway.discarded += 1
                continue
            self._handle(frame)
        del buf[:pos]
        if self._garbage:
            buf.clear()

    def _handle(self, frame: _Frame) -> None:
        gateway = self.gateway
        number = self.received + 1
        limit = gateway.silent_close_after
        if (limit is not None and number > limit) or (
            gateway.silent_close_probability > 0
            and gateway.random.random() < gateway.silent_close_probability
        ):
            # The frame on which the connection is cut is not delivered.
            gateway.discarded += 1
            self._silent_close()
            return
        self.received = number
        gateway.received += 1
        status = self._status_of(frame, gateway.received)
        if status:
            self._reject(status, frame)
        else:
            assert frame.command is not None and frame.token is not None
            assert frame.payload is not None
            record = DeliveredNotification(
                token=frame.token,
                payload=frame.payload,
                identifier=frame.identifier,
                expiry=frame.expiry,
                priority=frame.priority,
                command=frame.command,
                connection=self.serial,
            )
            gateway.delivered.append(record)
            self.accepted += 1
            self.last_accepted_identifier = frame.identifier
            gateway._notify_delivered()
            if gateway.shutdown_after is not None and self.accepted >= gateway.shutdown_after:
                _log.info(
                    "fake gateway connection {connection}: shutdown after {count} accepted",
                    connection=self.serial,
                    count=self.accepted,
                )
                self._send_error(STATUS_SHUTDOWN, frame.identifier, reason="shutdown")
                return
        if not self.failed and limit is not None and self.received >= limit:
            self._silent_close()

    def _status_of(self, frame: _Frame, number: int) -> int:
        gateway = self.gateway
        if frame.structure_status:
            return frame.structure_status
        if not frame.token:
            return STATUS_MISSING_TOKEN
        if len(frame.token) != gateway.token_length:
            return STATUS_INVALID_TOKEN_SIZE
        if not frame.payload:
            return STATUS_MISSING_PAYLOAD
        if len(frame.payload) > gateway.max_payload:
            return STATUS_INVALID_PAYLOAD_SIZE
        scripted = gateway._rejected_tokens.get(frame.token)
        if scripted is not None:
            return scripted
        for prefix, prefix_status in gateway._rejected_prefixes:
            if frame.token.startswith(prefix):
                return prefix_status
        return gateway._rejected_nth.get(number, 0)

    # -- answering ----------------------------------------------------------------------

    def _reject(self, status: int, frame: _Frame) -> None:
        gateway = self.gateway
        parsed: DeliveredNotification | None = None
        if status != STATUS_PROTOCOL_ERROR and frame.command is not None:
            parsed = DeliveredNotification(
                token=frame.token or b"",
                payload=frame.payload or b"",
                identifier=frame.identifier,
                expiry=frame.expiry,
                priority=frame.priority,
                command=frame.command,
                connection=self.serial,
            )
        gateway.rejected.append(
            Rejection(
                status=status,
                identifier=frame.identifier,
                command=frame.command,
                connection=self.serial,
                notification=parsed,
            )
        )
        _log.info(
            "fake gateway connection {connection}: rejecting identifier {identifier} "
            "(token {token}) with status {status}",
            connection=self.serial,
            identifier=frame.identifier,
            token=shorten(frame.token) if frame.token else "-",
            status=status,
        )
        if frame.command == COMMAND_SIMPLE:
            # The simple format has no identifier: Apple just closes.
            self.failed = True
            self._cut("simple-error", abort=False)
            return
        self._send_error(status, frame.identifier, reason="error")

    def _send_error(self, status: int, identifier: int, *, reason: str) -> None:
        """Decide an error response: from now on everything received is discarded."""
        self.failed = True
        self._timers.cancel(self._idle_call)
        self._idle_call = None
        delay = self.gateway.error_delay
        if delay is None:
            self._write_error(status, identifier, reason)
        else:
            self._timers.later(delay, lambda: self._write_error(status, identifier, reason))

    def _write_error(self, status: int, identifier: int, reason: str) -> None:
        gateway = self.gateway
        if self._lost:
            return
        sent_identifier = 0 if gateway.report_id_zero else identifier
        gateway.errors_sent.append((status, sent_identifier))
        data = _ERROR.pack(COMMAND_ERROR, status, sent_identifier)
        split = gateway.split_error
        if split is False:
            pieces = [data]
        elif split is True:
            pieces = _split(data, (1,))
        else:
            pieces = _split(data, split)
        _write_pieces(
            _transport_of(self),
            pieces,
            self._timers,
            gateway.split_error_interval if len(pieces) > 1 else None,
            lambda: self._close_after_error(reason),
        )

    def _close_after_error(self, reason: str) -> None:
        grace = self.gateway.discard_grace
        if grace is None:
            self._cut(reason, abort=False)
        else:
            self._closing = True
            self.gateway.closes.append((self.serial, reason))
            self._timers.later(grace, self._lose)

    def _silent_close(self) -> None:
        self.failed = True
        _log.info(
            "fake gateway connection {connection}: silent close after {count} frames",
            connection=self.serial,
            count=self.received,
        )
        self._cut("silent", abort=self.gateway.silent_close_abort)

    def _cut(self, reason: str, *, abort: bool) -> None:
        if self._closing or self._lost:
            return
        self._closing = True
        self.failed = True
        self._timers.cancel_all()
        self._idle_call = None
        self.gateway.closes.append((self.serial, reason))
        if abort:
            _transport_of(self).abortConnection()
        else:
            _transport_of(self).loseConnection()

    def _lose(self) -> None:
        if not self._lost:
            self._timers.cancel_all()
            _transport_of(self).loseConnection()

    def drop(self, *, abort: bool = True) -> None:
        """Close this connection now with no error response (a reset, if *abort*)."""
        if self._lost:
            return
        if self._closing:
            # Already on its way out (e.g. in its discard grace): hurry it up.
            self._timers.cancel_all()
            if abort:
                _transport_of(self).abortConnection()
            else:
                _transport_of(self).loseConnection()
            return
        self._cut("dropped", abort=abort)

    # -- idle timeout -------------------------------------------------------------------

    def _touch(self) -> None:
        timeout = self.gateway.idle_timeout
        if timeout is None or self.failed or self.paused or self._lost:
            return
        if self._idle_call is not None and self._idle_call.active():
            self._idle_call.reset(timeout)
        else:
            self._idle_call = self._timers.later(timeout, self._idle)

    def _idle(self) -> None:
        self._idle_call = None
        _log.info("fake gateway connection {connection}: idle, closing", connection=self.serial)
        self._cut("idle", abort=False)


class FakeGateway(ServerFactory):
    """A scriptable fake binary APNs gateway: the server factory, its script and its records.

    :param clock: the clock for timed options (``stall_reads``, ``idle_timeout``,
        ``error_delay``, ``split_error_interval``, ``discard_grace``); :func:`listen_gateway`
        fills in the reactor when it is ``None``.
    :param max_payload: the payload limit (2048; 256 for the pre-iOS 8 gateway).
    :param token_length: the only token length accepted (32).
    :param seed: seed of :attr:`random`, which drives ``silent_close_probability``.

    **Records** (cleared by :meth:`reset`):

    * ``delivered``: every accepted notification, in order (:class:`DeliveredNotification`);
    * ``rejected``: every refused notification, in order (:class:`Rejection`);
    * ``errors_sent``: ``(status, identifier)`` of every error response written, shutdown
      (status 10) included, identifier as sent;
    * ``discarded``: frames received but not handled: after an error response was decided on
      their connection (as at Apple), or from the frame that triggered a silent close on;
    * ``discarded_bytes``: bytes that could not even be framed (after an unknown command);
    * ``received``: frames handled (delivered + rejected); ``reject_nth`` counts these;
    * ``connections``: connections made (the last one's serial number);
    * ``closes``: ``(connection, why)`` for each closed connection, ``why`` one of
      ``"error"``, ``"shutdown"``, ``"simple-error"``, ``"silent"``, ``"idle"``,
      ``"handshake"``, ``"dropped"``, ``"peer"`` (the client closed first);
    * ``peer_certificates``: the client certificate of each TLS connection (a
      ``cryptography`` certificate, or ``None`` if it sent none).

    **Script** (kept by :meth:`reset`; :meth:`clear_script` restores the defaults). The
    attributes can be changed at any time and take effect on the next frame:

    * ``shutdown_after``: after this many notifications accepted on one connection, answer
      ``[8, 10, identifier of the last accepted]`` and close (status 10: that one *was*
      delivered);
    * ``silent_close_after``: after this many frames handled on one connection, cut it with
      no error response (0 = cut on the first frame, which is not delivered);
    * ``silent_close_probability``: the chance that each frame cuts its connection with no
      response; that frame is not delivered, the earlier ones were (seeded by ``seed``);
    * ``silent_close_abort``: silent cuts use ``abortConnection`` (a reset; default) rather
      than ``loseConnection``;
    * ``split_error``: write the 6-byte error response in pieces: ``True`` byte by byte, a
      tuple of sizes (repeated) such as ``(1, 5)``, ``False`` (default) in one write;
    * ``split_error_interval``: seconds between those pieces on the clock. ``None`` (default)
      writes them back to back: separate ``write`` calls, which in-memory transports keep
      apart but a real socket may coalesce; on real sockets use a small interval;
    * ``stall``: stop reading (``pauseProducing``) on every connection, so that client writes
      back up; ``False`` resumes. :meth:`stall_reads` stalls for a given time;
    * ``idle_timeout``: close connections that received nothing for this many seconds;
    * ``close_after_handshake``: close every new connection at once, after the TLS handshake
      when there is one: the wrong-environment certificate symptom;
    * ``report_id_zero``: every error response names identifier 0, as gateways that cannot
      identify the notification do (a client must not loop on it);
    * ``error_delay``: write error responses this many seconds after the error (the client
      keeps writing meanwhile; what it writes is discarded);
    * ``discard_grace``: after an error response, keep reading (and discarding) for this many
      seconds before closing; ``None`` (default) closes at once, as Apple did;
    * scripted rejections: :meth:`reject_token`, :meth:`reject_tokens_with_prefix`,
      :meth:`reject_nth`.
    """

    protocol = GatewayProtocol

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        max_payload: int = 2048,
        token_length: int = 32,
        max_frame_length: int = 65536,
        seed: int = 0,
    ) -> None:
        self.clock = clock
        self.max_payload = max_payload
        self.token_length = token_length
        self.max_frame_length = max_frame_length
        self.random = random.Random(seed)
        self._live: set[GatewayProtocol] = set()
        self._stall = False
        self._stall_call: IDelayedCall | None = None
        self._delivered_waiters: list[tuple[int, Deferred[list[DeliveredNotification]]]] = []
        self._closed_waiters: list[Deferred[None]] = []
        self.clear_script()
        self.reset()

    # -- script -------------------------------------------------------------------------

    def clear_script(self) -> None:
        """Back to a well-behaved gateway: no scripted rejection, close, stall or delay."""
        self._rejected_tokens: dict[bytes, int] = {}
        self._rejected_prefixes: list[tuple[bytes, int]] = []
        self._rejected_nth: dict[int, int] = {}
        self.shutdown_after: int | None = None
        self.silent_close_after: int | None = None
        self.silent_close_probability: float = 0.0
        self.silent_close_abort: bool = True
        self.split_error: bool | tuple[int, ...] = False
        self.split_error_interval: float | None = None
        self.idle_timeout: float | None = None
        self.close_after_handshake: bool = False
        self.report_id_zero: bool = False
        self.error_delay: float | None = None
        self.discard_grace: float | None = None
        self.stall = False

    def reject_token(self, token: bytes, status: int = STATUS_INVALID_TOKEN) -> None:
        """Refuse every notification to *token* with *status* (8, invalid token, by default)."""
        self._rejected_tokens[bytes(token)] = status

    def reject_tokens_with_prefix(self, prefix: bytes, status: int = STATUS_INVALID_TOKEN) -> None:
        """Refuse every notification whose token starts with *prefix* (e.g. ``b"\\xff"``)."""
        self._rejected_prefixes.append((bytes(prefix), status))

    def reject_nth(self, n: int, status: int) -> None:
        """Refuse the *n*-th notification handled (1-based, counted across all connections
        since creation or :meth:`reset`) with *status*, whatever it holds."""
        if n < 1:
            raise ValueError(f"n counts from 1, not {n}")
        self._rejected_nth[n] = status

    @property
    def stall(self) -> bool:
        """Whether every connection has stopped reading (see the class docstring)."""
        return self._stall

    @stall.setter
    def stall(self, value: bool) -> None:
        self._stall = value
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None
        for proto in list(self._live):
            if proto._handshake_pending:
                continue
            if value:
                proto.pause_reading()
            else:
                proto.resume_reading()

    def stall_reads(self, seconds: float) -> None:
        """Stop reading on every connection (new ones too) for *seconds* on the clock."""
        if self.clock is None:
            raise RuntimeError("FakeGateway.stall_reads needs a clock (IReactorTime)")
        self.stall = True
        self._stall_call = self.clock.callLater(seconds, self._end_stall)

    def _end_stall(self) -> None:
        self._stall_call = None
        self.stall = False

    # -- records ------------------------------------------------------------------------

    def reset(self) -> None:
        """Clear the records and counters (``reject_nth`` counts from 1 again); keep the
        script and the open connections."""
        self.delivered: list[DeliveredNotification] = []
        self.rejected: list[Rejection] = []
        self.errors_sent: list[tuple[int, int]] = []
        self.closes: list[tuple[int, str]] = []
        self.peer_certificates: list[Certificate | None] = []
        self.discarded = 0
        self.discarded_bytes = 0
        self.received = 0
        self.connections = 0

    @property
    def rejected_tokens(self) -> list[bytes]:
        """Tokens refused with status 8 (invalid token), in order: what a client must prune."""
        return [
            r.notification.token
            for r in self.rejected
            if r.status == STATUS_INVALID_TOKEN and r.notification is not None
        ]

    @property
    def delivered_identifiers(self) -> list[int]:
        """``identifier`` of every delivered notification, in order."""
        return [n.identifier for n in self.delivered]

    @property
    def open_connections(self) -> int:
        return len(self._live)

    @property
    def live_protocols(self) -> list[GatewayProtocol]:
        """The connections still open, oldest first."""
        return sorted(self._live, key=lambda p: p.serial)

    def when_delivered(self, count: int) -> Deferred[list[DeliveredNotification]]:
        """A Deferred firing with :attr:`delivered` once it holds at least *count* records."""
        d: Deferred[list[DeliveredNotification]] = Deferred()
        if len(self.delivered) >= count:
            d.callback(self.delivered)
        else:
            self._delivered_waiters.append((count, d))
        return d

    def when_all_closed(self) -> Deferred[None]:
        """A Deferred firing once no connection to the gateway is open."""
        d: Deferred[None] = Deferred()
        if not self._live:
            d.callback(None)
        else:
            self._closed_waiters.append(d)
        return d

    def _notify_delivered(self) -> None:
        if not self._delivered_waiters:
            return
        ready = [w for w in self._delivered_waiters if len(self.delivered) >= w[0]]
        self._delivered_waiters = [w for w in self._delivered_waiters if w not in ready]
        for _, d in ready:
            d.callback(self.delivered)

    def _connection_closed(self, proto: GatewayProtocol) -> None:
        self._live.discard(proto)
        if not self._live:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    # -- factory ------------------------------------------------------------------------

    def buildProtocol(self, addr: IAddress | None) -> GatewayProtocol:
        if self.clock is None and (
            self.idle_timeout is not None
            or self.error_delay is not None
            or self.discard_grace is not None
            or (self.split_error is not False and self.split_error_interval is not None)
        ):
            raise RuntimeError("FakeGateway: a timed option is set but the gateway has no clock")
        self.connections += 1
        proto = GatewayProtocol(self, self.connections)
        proto.factory = self
        return proto

    def disconnect_all(self, *, abort: bool = True) -> None:
        """Close every open connection with no error response."""
        for proto in self.live_protocols:
            proto.drop(abort=abort)

    def stop(self) -> None:
        """Cancel every timer and drop every connection (call it in test cleanup)."""
        if self._stall_call is not None and self._stall_call.active():
            self._stall_call.cancel()
        self._stall_call = None
        for proto in self.live_protocols:
            proto._timers.cancel_all()
            proto.drop(abort=True)


# --- the feedback service --------------------------------------------------------------------


def encode_feedback_tuple(timestamp: int, token: bytes) -> bytes:
    """One feedback tuple: ``time:4 | tokenLen:2 | token``."""
    return _FEEDBACK_HEADER.pack(timestamp, len(token)) + token


@implementer(IHandshakeListener)
class FeedbackProtocol(Protocol):
    """One connection to the fake feedback service: serve the tuples, then close."""

    def __init__(self, service: FakeFeedbackService) -> None:
        self.service = service
        self._timers = _Timers(service.clock, "FakeFeedbackService")
        self._pending_handshake = False
        self._lost = False

    def connectionMade(self) -> None:
        self.service._live.add(self)
        if _is_tls(self.transport):
            # Serve only once the handshake succeeded: a client that fails it reads nothing,
            # and must not empty the list.
            self._pending_handshake = True
        else:
            self._serve()

    def handshakeCompleted(self) -> None:
        if self._pending_handshake and not self._lost:
            self._pending_handshake = False
            self._serve()

    def dataReceived(self, data: bytes) -> None:
        # Feedback clients send nothing; anything they do send is ignored, as at Apple.
        pass

    def _serve(self) -> None:
        service = self.service
        tuples, service.tuples = service.tuples, []
        service.served.extend(tuples)
        _log.info("fake feedback service: serving {count} tuples", count=len(tuples))
        data = b"".join(encode_feedback_tuple(t, token) for t, token in tuples)
        if service.split_writes:
            _no_delay(self.transport)
            pieces = _split(data, (service.chunk_size,))
            interval = service.split_interval
        else:
            pieces = [data] if data else []
            interval = None
        _write_pieces(_transport_of(self), pieces, self._timers, interval, self._finish)

    def _finish(self) -> None:
        if self.service.close_after_serving and not self._lost:
            _transport_of(self).loseConnection()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self._lost = True
        self._timers.cancel_all()
        self.service._live.discard(self)


class FakeFeedbackService(ServerFactory):
    """A fake feedback service: serves the tuples it holds to the next reader, then closes.

    :param clock: needed only for ``split_interval``.

    * ``tuples``: ``(timestamp, token)`` pairs still to serve; :meth:`add` appends one. The
      first connection to complete (its TLS handshake, if any) takes them all and the list is
      emptied, as at Apple (one reader per certificate).
    * ``served``: every tuple served so far, in order; ``connections``: connections made.
    * ``split_writes``: write the stream in pieces of ``chunk_size`` bytes (5 by default, so
      piece boundaries fall everywhere inside tuples), spaced by ``split_interval`` seconds
      on the clock when that is not ``None``.
    * ``close_after_serving``: close once everything is written (default ``True``).
    """

    protocol = FeedbackProtocol

    def __init__(
        self,
        clock: IReactorTime | None = None,
        *,
        split_writes: bool = False,
        chunk_size: int = 5,
        split_interval: float | None = None,
    ) -> None:
        self.clock = clock
        self.tuples: list[tuple[int, bytes]] = []
        self.served: list[tuple[int, bytes]] = []
        self.connections = 0
        self.split_writes = split_writes
        self.chunk_size = chunk_size
        self.split_interval = split_interval
        self.close_after_serving = True
        self._live: set[FeedbackProtocol] = set()

    def add(self, token: bytes, timestamp: int) -> None:
        """Queue the tuple ``(timestamp, token)`` for the next reader."""
        if not 0 <= timestamp <= 0xFFFFFFFF:
            raise ValueError(f"timestamp must fit in 32 bits, not {timestamp}")
        if len(token) > 0xFFFF:
            raise ValueError("token too long for a feedback tuple")
        self.tuples.append((timestamp, bytes(token)))

    def buildProtocol(self, addr: IAddress | None) -> FeedbackProtocol:
        if self.clock is None and self.split_writes and self.split_interval is not None:
            raise RuntimeError("FakeFeedbackService: split_interval needs a clock")
        self.connections += 1
        proto = FeedbackProtocol(self)
        proto.factory = self
        return proto

    def stop(self) -> None:
        """Cancel every timer and drop every connection."""
        for proto in list(self._live):
            proto._timers.cancel_all()
            _transport_of(proto).abortConnection()


# --- listening -------------------------------------------------------------------------------


def _listen(
    reactor: IReactorTCP,
    factory: ServerFactory,
    port: int,
    interface: str,
    tls_options: IOpenSSLContextFactory | None,
) -> IListeningPort:
    if tls_options is None:
        return reactor.listenTCP(port, factory, interface=interface)
    return IReactorSSL(reactor).listenSSL(port, factory, tls_options, interface=interface)


def listen_gateway(
    reactor: IReactorTCP,
    gateway: FakeGateway,
    *,
    port: int = 0,
    interface: str = "127.0.0.1",
    tls_options: IOpenSSLContextFactory | None = None,
) -> IListeningPort:
    """Listen with *gateway* on *interface*:*port* (0 = any free port), over TLS with
    *tls_options* (e.g. :func:`txapns.testing.pki.server_tls_options`) or plain TCP.

    The gateway's clock becomes *reactor* if it had none. Read the port number with
    ``port.getHost().port``; stop with ``port.stopListening()`` and :meth:`FakeGateway.stop`.
    """
    if gateway.clock is None and IReactorTime.providedBy(reactor):
        gateway.clock = IReactorTime(reactor)
    return _listen(reactor, gateway, port, interface, tls_options)


def listen_feedback(
    reactor: IReactorTCP,
    service: FakeFeedbackService,
    port: int = 0,
    interface: str = "127.0.0.1",
    tls_options: IOpenSSLContextFactory | None = None,
) -> IListeningPort:
    """Listen with the feedback *service*; like :func:`listen_gateway`."""
    if service.clock is None and IReactorTime.providedBy(reactor):
        service.clock = IReactorTime(reactor)
    return _listen(reactor, service, port, interface, tls_options)
