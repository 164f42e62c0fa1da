"""The binary protocol's delivery state machine for one connection slot (sans-IO).

A *channel* owns the pending queue and the in-flight window of one logical connection that
survives reconnects. The Twisted glue (:mod:`txapns.binary`) feeds it connection events,
received bytes and the current time, writes the bytes it returns, and fires the handles of the
``(Pending, Result)`` pairs it resolves.

What the legacy gateway tells us, and how this machine turns it into outcomes:

* The gateway answers only failures: one 6-byte error naming identifier N, then it closes and
  discards everything after N. TCP is ordered, so every frame before N was accepted. Status 10
  (shutdown) means N itself was delivered; 0, 1 and 255 are transient; the rest reject N.
* Everything after N is re-queued at the *head* of the queue in its original order (replay).
* With no error, a notification is accepted once ``quiet`` seconds passed after its write.
* A close with no error response leaves the unconfirmed part of the window *unknown*; the
  :class:`UnknownPolicy` decides whether to re-send (possible duplicate, counted) or to finish
  them as unknown.
* The window is bounded by count and bytes: when full, :meth:`take_frames` returns nothing
  (back-pressure) until older entries are confirmed. Nothing unconfirmed is ever evicted.
* An error that names identifier 0 (gateways that cannot tell which notification was bad)
  with a rejecting status starts an *isolation*: the window it spoiled is sent again in
  halves, the second half first and alone, each half confirmed (quiet window) or failed before
  the next write, until the bad notification is written alone and its error can only be its
  own (see :meth:`BinaryChannel.isolating`).
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from .binary import (
    DecodeError,
    ErrorResponse,
    ErrorResponseDecoder,
    classify_status,
    encode_frame,
    next_identifier,
    status_name,
)
from .counters import Counters
from .errors import ProtocolError, QueueFullError
from .notification import Notification
from .queue_time import UNREACHABLE, QueueTimeLimit
from .result import Outcome, Result, UnknownPolicy

__all__ = [
    "SENTINEL_TOKEN",
    "UNREACHABLE",
    "BinaryChannel",
    "ChannelConfig",
    "Pending",
    "UnknownPolicy",
]

#: Identifiers cycle through 1..2**32-1 (0 is never used).
_ID_PERIOD = 0xFFFFFFFF

#: Apple rejects this token with status 8, as do the shared bench mock and ``FakeGateway`` when
#: scripted with ``reject_tokens_with_prefix(b"\xff")``: written after the last real
#: notification it makes the gateway confirm everything before it (see :meth:`take_sentinel`).
#: A gateway that accepts it just delivers one extra notification; the tail then waits out the
#: quiet window as usual.
SENTINEL_TOKEN = b"\xff" * 32
_SENTINEL = Notification(SENTINEL_TOKEN, b'{"aps":{}}')


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    max_window: int = 200_000
    max_window_bytes: int = 64 * 1024 * 1024
    max_queue: int = 100_000
    #: Writes allowed for a notification that keeps failing transiently or going unknown.
    max_attempts: int = 3
    unknown_policy: UnknownPolicy = UnknownPolicy.RESEND
    #: Seconds without an error after which a written notification counts as accepted.
    quiet: float = 1.0

    def __post_init__(self) -> None:
        if self.max_window < 1 or self.max_queue < 1 or self.max_window_bytes < 4096:
            raise ValueError("window and queue bounds must be positive (bytes ≥ 4096)")
        if self.max_attempts < 1:
            raise ValueError("max_attempts must be at least 1")
        if self.quiet <= 0:
            raise ValueError("quiet must be positive")


class Pending:
    """One notification held by a channel, with the caller's opaque ``handle``."""

    __slots__ = (
        "duplicate",
        "handle",
        "maybe_delivered",
        "notification",
        "sent_at",
        "sentinel",
        "size",
        "submitted_at",
        "tries",
        "writes",
    )

    def __init__(self, notification: Notification, handle: Any, now: float) -> None:
        self.notification = notification
        self.handle = handle
        self.submitted_at = now
        self.sent_at = 0.0
        self.size = 0
        self.writes = 0
        #: Failed attempts (transient statuses, unknown outcomes).
        self.tries = 0
        #: True once it was in flight when a connection closed silently.
        self.maybe_delivered = False
        #: Written again after that: the gateway may deliver it twice.
        self.duplicate = False
        self.sentinel = False


Resolution = tuple[Pending, Result]


class BinaryChannel:
    def __init__(self, config: ChannelConfig | None = None, counters: Counters | None = None):
        self.config = config or ChannelConfig()
        self.counters = counters if counters is not None else Counters()
        self.queue: deque[Pending] = deque()
        self.window: deque[Pending] = deque()
        self.window_bytes = 0
        self.connected = False
        #: The error response received on the current connection, if any.
        self.error: ErrorResponse | None = None
        #: Why the current connection must be dropped (garbage from the gateway), if so.
        self.broken: str | None = None
        self._decoder = ErrorResponseDecoder()
        self._next_id = 1
        self._first_id = 1
        self._sentinels = 0
        #: Notifications confirmed accepted on the current connection.
        self.accepted_here = 0
        #: Isolation: the group known to hold a bad notification that is not being written
        #: (the first half while the second half is the probe).
        self._suspects: list[Pending] = []
        #: Isolation: the probe (a half written alone) is in the window.
        self._probing = False
        #: Isolation: notifications taken out of the suspects that go back to the head of
        #: the queue, in order, when the isolation ends.
        self._after: list[Pending] = []
        #: The gateway answered an error naming identifier 0: it cannot name notifications,
        #: so the sentinel (whose rejection would name nothing either) is not used.
        self.zero_ids = False

    # --- bookkeeping ---------------------------------------------------------------------

    def pending(self) -> int:
        """Notifications held (queued, in flight or being isolated), sentinels excluded."""
        return (
            len(self.queue)
            + len(self.window)
            + len(self._suspects)
            + len(self._after)
            - self._sentinels
        )

    @property
    def isolating(self) -> bool:
        """An error named identifier 0 and a rejecting status: the window it spoiled holds a
        bad notification, which is being isolated. Nothing else is written meanwhile: each
        write is one *probe*, the second half of the suspect group, alone. Confirmed by the
        quiet window, the probe is accepted (it came after the bad one, which the gateway
        discarded: no duplicate) and the bad one is in the first half; failed in turn, the
        probe is the new suspect group and the first half goes back to the queue under the
        unknown policy (it may have been delivered before the bad one: a possible
        duplicate). A probe of one is the bad notification: its error is attributed to it."""
        return self._probing or bool(self._suspects)

    def queue_room(self) -> int:
        return self.config.max_queue - len(self.queue)

    def window_full(self) -> bool:
        return (
            len(self.window) >= self.config.max_window
            or self.window_bytes >= self.config.max_window_bytes
        )

    def writable(self) -> bool:
        """True when :meth:`take_frames` would return bytes."""
        if not self.connected or self.error is not None or self.broken is not None:
            return False
        if self._probing or self._suspects:
            return not self._probing and not self.window
        return bool(self.queue) and not self.window_full()

    def submit(self, notification: Notification, handle: Any, now: float) -> Pending:
        """Queue a validated notification; :class:`QueueFullError` when the queue is full."""
        if len(self.queue) >= self.config.max_queue:
            raise QueueFullError(
                f"pending queue is full ({self.config.max_queue} notifications); "
                "wait for results or raise max_queue"
            )
        item = Pending(notification, handle, now)
        self.queue.append(item)
        self.counters.submitted += 1
        return item

    # --- connection events ---------------------------------------------------------------

    def connection_made(self) -> None:
        self.connected = True
        self.error = None
        self.broken = None
        self._decoder = ErrorResponseDecoder()
        self._next_id = 1
        self._first_id = 1
        self.accepted_here = 0

    def take_frames(self, now: float, max_bytes: int = 1 << 20) -> bytes:
        """Move queued notifications into the window; return their frames as one write."""
        if not self.writable():
            return b""
        if self._suspects:
            return self._take_probe(now)
        cfg = self.config
        queue, window = self.queue, self.window
        parts: list[bytes] = []
        total = 0
        ident = self._next_id
        if not window:
            self._first_id = ident
        wbytes = self.window_bytes
        max_window, max_wbytes = cfg.max_window, cfg.max_window_bytes
        while queue and total < max_bytes and len(window) < max_window and wbytes < max_wbytes:
            item = queue.popleft()
            n = item.notification
            frame = encode_frame(ident, n.token, n.payload, n.expiry, n.priority)
            ident = ident + 1 if ident < _ID_PERIOD else 1
            size = len(frame)
            item.sent_at = now
            item.size = size
            item.writes += 1
            if item.maybe_delivered:
                item.duplicate = True
            window.append(item)
            wbytes += size
            parts.append(frame)
            total += size
        self._next_id = ident
        self.window_bytes = wbytes
        self.counters.note_window(len(window))
        return b"".join(parts)

    def _take_probe(self, now: float) -> bytes:
        """Write the second half of the suspect group (all of it when it is one), alone."""
        suspects = self._suspects
        half = len(suspects) // 2
        probe = suspects[half:]
        self._suspects = suspects[:half]
        self._probing = True
        self._first_id = ident = self._next_id
        parts: list[bytes] = []
        for item in probe:
            n = item.notification
            frame = encode_frame(ident, n.token, n.payload, n.expiry, n.priority)
            ident = next_identifier(ident)
            item.sent_at = now
            item.size = len(frame)
            item.writes += 1
            if item.maybe_delivered:
                item.duplicate = True
            self.window.append(item)
            self.window_bytes += item.size
            parts.append(frame)
        self._next_id = ident
        return b"".join(parts)

    def take_sentinel(self, now: float) -> bytes:
        """Write a known-bad notification so the gateway confirms everything before it.

        Used when draining: the gateway rejects the sentinel with status 8 and closes, which
        confirms every real notification written before it without waiting ``quiet`` seconds.
        Returns ``b""`` when there is nothing to confirm or a sentinel is already in flight.
        """
        if (
            not self.connected
            or self.error
            or self.broken
            or self._sentinels
            or not self.window
            or self.zero_ids
            or self.isolating
        ):
            return b""
        item = Pending(_SENTINEL, None, now)
        item.sentinel = True
        ident = self._next_id
        if not self.window:
            self._first_id = ident
        frame = encode_frame(ident, SENTINEL_TOKEN, _SENTINEL.payload)
        self._next_id = next_identifier(ident)
        item.sent_at = now
        item.size = len(frame)
        item.writes = 1
        # Appended even when the window is full: it must never wait behind the bound, and it
        # follows everything written so far (queued items are not written yet).
        self.window.append(item)
        self.window_bytes += item.size
        self._sentinels += 1
        return frame

    def data_received(self, data: bytes, now: float) -> list[Resolution]:
        """Feed bytes from the gateway; returns what an error response resolved."""
        try:
            errors = self._decoder.feed(data)
        except ProtocolError as e:
            self.broken = str(e)
            # An error response decoded before the garbage still decides the window.
            errors = e.records if isinstance(e, DecodeError) else []
        if not errors or self.error is not None:
            return []
        return self._on_error(errors[0], now)

    def connection_lost(
        self, now: float, why: str, *, undelivered: bool = False
    ) -> list[Resolution]:
        """The connection closed. After an error response this resolves nothing more;
        otherwise what is past the quiet window is accepted and the rest becomes unknown.

        ``undelivered``: the gateway certainly took nothing from this connection (its TLS
        session was refused), so the window goes back to the head of the queue as it was:
        not unknown, not a possible duplicate, no attempt used.
        """
        self.connected = False
        if self.error is not None and self.broken is None:
            self.error = None
            return []
        if undelivered and self.error is None:
            self.broken = None
            requeue = [item for item in self.window if not item.sentinel]
            self.window.clear()
            self.window_bytes = 0
            self._sentinels = 0
            if self._probing:
                self._probing = False
                self._suspects.extend(requeue)  # the group as it was before the probe
            else:
                self.queue.extendleft(reversed(requeue))
            return []
        self.error = None
        if self.broken is not None:
            why = f"{why} (dropped: {self.broken})"
        out = self.confirm_quiet(now)
        out.extend(self._unknown_window(why, "silent-close", now))
        out.extend(self._end_isolation(why, "silent-close", now))
        return out

    # --- confirmations -------------------------------------------------------------------

    def confirm_quiet(self, now: float) -> list[Resolution]:
        """Accept what was written at least ``quiet`` seconds ago with no error since."""
        window = self.window
        cutoff = now - self.config.quiet
        out: list[Resolution] = []
        if not window or window[0].sent_at > cutoff:
            return out
        popped = 0
        duplicates = 0
        accepted_for = Result.accepted_for
        while window and window[0].sent_at <= cutoff:
            item = window.popleft()
            popped += 1
            self.window_bytes -= item.size
            if item.sentinel:
                self._sentinels -= 1
                continue
            if item.duplicate:
                duplicates += 1
            out.append(
                (
                    item,
                    accepted_for(
                        item.notification, item.writes, now - item.submitted_at, item.duplicate
                    ),
                )
            )
        self._first_id = self._advance(self._first_id, popped)
        # Counters.record for each, in bulk (the hot path: every confirmation).
        self.counters.record_accepted(len(out), duplicates)
        if self._probing and not window:
            self._probing = False  # the probe passed: the bad one is in the first half
            if not self._suspects:
                self._end_isolation("", "isolation", now)  # the bad one passed after all
        self.accepted_here += len(out)
        return out

    def next_deadline(self) -> float | None:
        """When the oldest in-flight notification passes the quiet window."""
        return self.window[0].sent_at + self.config.quiet if self.window else None

    def fail_all(self, reason: str, local: str, now: float) -> list[Resolution]:
        """Finish everything held (the client stops, or credentials are rejected).

        Never-written or certainly-discarded notifications are rejected locally; those that
        may have reached APNs are finished as unknown.
        """
        out: list[Resolution] = []
        in_flight = len(self.window) + len(self._suspects)
        held = (*self.window, *self._suspects, *self._after, *self.queue)
        self._suspects = []
        self._after = []
        self._probing = False
        for position, item in enumerate(held):
            if not item.sentinel:
                maybe = item.maybe_delivered or position < in_flight
                out.append(self._give_up(item, now, reason, local, maybe))
        self.window.clear()
        self.queue.clear()
        self.window_bytes = 0
        self._sentinels = 0
        return out

    def expire_queued(
        self, now: float, limit: QueueTimeLimit, local: str, reason: str
    ) -> list[Resolution]:
        """Finish what waited ``limit`` without being written (the window is left alone):
        rejected with ``local``, or unknown when an earlier attempt may have delivered it."""
        expired, kept = limit.split(self.queue, now)
        if expired:
            self.queue = deque(kept)
        if local == UNREACHABLE and self.isolating and not self._probing:
            # No connection to go on isolating with. The suspects may have been delivered.
            lost, self._suspects = limit.split(self._suspects, now)
            after_lost, self._after = limit.split(self._after, now)
            for item in lost:
                item.maybe_delivered = True
            expired = lost + after_lost + expired
            if not self._suspects:
                self._end_isolation("", "isolation", now)  # the rest back to the queue
        return [self._give_up(item, now, reason, local, item.maybe_delivered) for item in expired]

    def _give_up(
        self, item: Pending, now: float, reason: str, local: str, maybe_delivered: bool
    ) -> Resolution:
        """Finished locally: unknown if it may have been delivered, else rejected."""
        outcome = Outcome.UNKNOWN if maybe_delivered else Outcome.REJECTED
        return (item, self._result(item, outcome, now, reason=reason, local=local))

    def waiting(self) -> list[Pending]:
        """What waits to be written (for :meth:`QueueTimeLimit.next_check`)."""
        return [*self.queue, *self._suspects, *self._after]

    # --- internals -------------------------------------------------------------------------

    @staticmethod
    def _advance(ident: int, count: int) -> int:
        return (ident - 1 + count) % _ID_PERIOD + 1

    def _find(self, identifier: int) -> int | None:
        if identifier == 0 or not self.window:
            return None
        offset = (identifier - self._first_id) % _ID_PERIOD
        return offset if offset < len(self.window) else None

    def _result(
        self,
        item: Pending,
        outcome: Outcome,
        now: float,
        *,
        status: int | None = None,
        reason: str | None = None,
        local: str | None = None,
    ) -> Result:
        """A final result, counted (:meth:`Counters.record`)."""
        result = Result(
            item.notification,
            outcome,
            status,
            reason,
            None,
            None,
            None,
            item.writes,
            now - item.submitted_at,
            local,
            item.duplicate,
        )
        self.counters.record(result)
        return result

    def _on_error(self, err: ErrorResponse, now: float) -> list[Resolution]:
        self.error = err
        index = self._find(err.identifier)
        if index is None and err.identifier == 0:
            if len(self.window) == 1 and not self.window[0].sentinel:
                index = 0  # written alone: the error can only be its own
            elif classify_status(err.status) == "rejected" and any(
                not item.sentinel for item in self.window
            ):
                return self._isolate(err, now)
        if index is None:
            why = (
                f"error response {status_name(err.status)} named identifier {err.identifier}, "
                "which is not in flight"
            )
            out = self._unknown_window(why, "unattributed-error", now)
            out.extend(self._end_isolation(why, "unattributed-error", now))
            return out
        out = self._attributed(err, index, now)
        # A probe's own error: the first half may have been delivered before the bad one.
        if self.isolating:
            why = f"may have been delivered before an unidentified {status_name(err.status)}"
            out.extend(self._end_isolation(why, "isolation", now))
        return out

    def _isolate(self, err: ErrorResponse, now: float) -> list[Resolution]:
        """An error named identifier 0 with a rejecting status: isolate the bad one."""
        self.zero_ids = True
        window = self.window
        real = [item for item in window if not item.sentinel]
        if self._sentinels:
            # The sentinel may be what was refused: then all the rest was delivered.
            for item in real:
                item.maybe_delivered = True
        window.clear()
        self.window_bytes = 0
        self._sentinels = 0
        out: list[Resolution] = []
        if self._probing:
            # The probe failed: the bad one is in it. The first half was not written since
            # the group's error and may have been delivered then: the unknown policy decides,
            # and what it re-sends waits for the end of the isolation.
            why = f"may have been delivered before an unidentified {status_name(err.status)}"
            out, requeue = self._unknown_items(self._suspects, why, "isolation", now)
            self._after.extend(requeue)
        self._probing = False
        self._suspects = real
        self.counters.replayed += len(real)
        return out

    def _end_isolation(self, why: str, key: str, now: float) -> list[Resolution]:
        """Stop isolating (the bad one was found, or the connection went): the suspects not
        being written go through the unknown policy (the probe, if any, was dealt with by the
        caller); they and the others taken out go back to the head of the queue, in order."""
        suspects, self._suspects = self._suspects, []
        self._probing = False
        out, requeue = self._unknown_items(suspects, why, key, now)
        after, self._after = self._after, []
        self.queue.extendleft(reversed(after + requeue))
        return out

    def _attributed(self, err: ErrorResponse, index: int, now: float) -> list[Resolution]:
        window = self.window
        out: list[Resolution] = []
        for _ in range(index):
            item = window.popleft()
            if item.sentinel:
                self._sentinels -= 1
                continue
            out.append((item, self._result(item, Outcome.ACCEPTED, now)))
        failed = window.popleft()
        kind = classify_status(err.status)
        name = status_name(err.status)
        requeue: list[Pending] = []
        if failed.sentinel:
            self._sentinels -= 1
        elif kind == "delivered":
            out.append((failed, self._result(failed, Outcome.ACCEPTED, now)))
        elif kind == "transient":
            failed.tries += 1
            if failed.tries >= self.config.max_attempts:
                # As over HTTP/2: the status's name, local "attempts" (Result.attempts says
                # how many).
                result = self._result(
                    failed, Outcome.REJECTED, now, status=err.status, reason=name, local="attempts"
                )
                out.append((failed, result))
            else:
                requeue.append(failed)
                self.counters.retried += 1
        else:
            out.append(
                (
                    failed,
                    self._result(failed, Outcome.REJECTED, now, status=err.status, reason=name),
                )
            )
        rest = [item for item in window if not item.sentinel]
        self._sentinels = 0
        self.counters.replayed += len(rest)
        requeue.extend(rest)
        window.clear()
        self.window_bytes = 0
        self.queue.extendleft(reversed(requeue))
        return out

    def _unknown_window(self, why: str, key: str, now: float) -> list[Resolution]:
        """Everything in flight has an unknown fate; ``key`` is the stable counter label."""
        items = [item for item in self.window if not item.sentinel]
        self.window.clear()
        self.window_bytes = 0
        self._sentinels = 0
        out, requeue = self._unknown_items(items, why, key, now)
        self.queue.extendleft(reversed(requeue))
        return out

    def _unknown_items(
        self, items: list[Pending], why: str, key: str, now: float
    ) -> tuple[list[Resolution], list[Pending]]:
        """``items`` (in order) have an unknown fate: to be re-sent (possible duplicates;
        returned second, in order) or finished unknown (first), as the unknown policy and
        ``max_attempts`` say."""
        out: list[Resolution] = []
        requeue: list[Pending] = []
        resend = self.config.unknown_policy is UnknownPolicy.RESEND
        for item in items:
            item.tries += 1
            item.maybe_delivered = True
            if resend and item.tries < self.config.max_attempts:
                requeue.append(item)
                self.counters.resent_unknown += 1
            else:
                # ``key`` (the stable label) as local, ``why`` (the detail) as reason.
                out.append((item, self._result(item, Outcome.UNKNOWN, now, reason=why, local=key)))
        return out, requeue
