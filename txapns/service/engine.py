"""The engine: from an accepted submission to a recorded outcome, through the spool.

One :class:`Engine` serves several apps, each with its own :class:`~txapns.interfaces.Sender`
(a started HTTP/2 or binary client). For a submission it

1. validates every notification first (:meth:`Engine.prepare`: nothing is half-accepted),
2. stores the job durably (:meth:`Engine.submit` fires once the spool committed it),
3. marks notifications ``inflight`` in the spool, then hands them to the app's Sender, at
   most ``max_inflight`` at a time per app, backing off when the Sender's queue is full
   (a job that finds the window free and nothing queued is stored as ``inflight`` in the
   same transaction as the job, so it reaches the Sender after one commit, not two),
4. records each :class:`~txapns.core.result.Result` in the spool (at once for a job someone
   waits for, else ``outcome_delay`` after the first of a batch of them), and wakes whoever
   waits for the job (:meth:`Engine.wait`).

An app that cannot send is *paused*: its work stays in the spool and ``/healthz`` fails until
it can again (:meth:`Engine.health`). That is the case when APNs refuses its credential or
TLS keeps failing (the client reports ``unavailable``, raises :class:`CircuitOpenError`, or
hands notifications back unsent), and when most of its answers are ``BadDeviceToken`` across
many tokens (:class:`~txapns.core.token_evidence.MismatchDetector`): then the environment is
wrong, and those tokens are held back from the invalid-token feed rather than reported dead.

Scheduled notifications (``send_at`` in the future) wait on one timer. On start the engine
resumes everything the spool holds unfinished (:meth:`Engine.start`); on stop it takes no
more submissions, lets what is in flight finish up to ``drain_timeout``, stops the Senders,
puts back what they never sent, and closes the spool (:meth:`Engine.stop`).
"""

from __future__ import annotations

import enum
import heapq
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, DeferredList, gatherResults
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from .._timers import Timer, Timers
from .._twisted import cancel_call
from ..core.errors import APNsError, CircuitOpenError, QueueFullError, ValidationError
from ..core.http2_policy import CIRCUIT_REASONS
from ..core.notification import (
    CheckedHTTP2,
    Notification,
    PushType,
    new_apns_id,
    parse_token,
    validate_binary,
    validate_http2,
)
from ..core.queue_time import NOT_SENT
from ..core.result import Outcome, Result
from ..core.token_evidence import (
    SUSPECT_KINDS,
    EvidenceKind,
    MismatchDetector,
    MismatchPolicy,
    Verdict,
    answered_by_apns,
    evidence_kind,
    mismatch_message,
)
from ..interfaces import Sender
from .backend import ConsumerHooks, OutcomesHeldError, SpoolBackend
from .config import ServiceConfig
from .metrics import AppGauges, ServiceMetrics
from .spool import JobView, OutcomeRecord, Recovery, SpooledNotification, SpoolError, StoredJob
from .webhook import InvalidTokenWebhook

log = Logger()

_DUMMY_TOKEN = b"\x00" * 32


class UnknownAppError(APNsError, LookupError):
    def __init__(self, app: str) -> None:
        super().__init__(f"no app named {app!r} is configured")
        self.app = app


class NotAcceptingError(APNsError):
    """The engine is not started, is recovering the spool, cannot store, or is stopping: it
    takes no submissions (the API answers 503)."""


class AppPausedError(NotAcceptingError):
    """The app cannot send now (see :meth:`Engine.health`); it takes no submissions."""

    def __init__(self, app: str, why: str) -> None:
        super().__init__(f"app {app!r} is paused: {why}")
        self.app = app
        self.why = why


class EngineState(enum.StrEnum):
    """The engine's life, in order. A :class:`str` subclass: ``/healthz`` reports it as its
    value while it is not running."""

    NEW = "new"
    #: Resuming the spool's unfinished work; no submissions until that has worked.
    RECOVERING = "recovering"
    RUNNING = "running"
    #: Draining what is in flight; the rest stays in the spool.
    STOPPING = "stopping"
    STOPPED = "stopped"


#: Why an app is paused: its client cannot send (credential refused, TLS failing), or its
#: answers say the environment is wrong.
PAUSED_UNAVAILABLE = "unavailable"
PAUSED_ENVIRONMENT = "environment"


def _not_sent_unavailable(result: Result) -> bool:
    """Rejected, never delivered, only because the app cannot send now (credential refused,
    circuit open, TLS failing): the notification itself is fine and goes back to the spool."""
    if result.outcome is not Outcome.REJECTED:
        return False
    if result.local is not None:
        return result.local in ("circuit-open", "tls", "proxy-auth")
    return result.status == 403 and result.reason in CIRCUIT_REASONS


class RecipientError(ValidationError):
    """One recipient of a batch is invalid; ``index`` says which."""

    def __init__(self, index: int, error: ValidationError) -> None:
        super().__init__(f"tokens[{index}]: {error}")
        self.index = index
        self.error = error


@dataclass(frozen=True, slots=True)
class EngineApp:
    """What the engine needs to know about one app."""

    sender: Sender
    #: Default topic (``apns-topic``) derived from it per push type; ``None``: caller's topic.
    bundle_id: str | None = None
    protocol: str = "http2"
    token_auth: bool = True
    #: Optional extra health details (connections, breaker state) for ``/healthz``.
    health: Callable[[], Mapping[str, object]] | None = None
    #: This app's bound on notifications handed to its Sender and not yet answered
    #: (``None``: the engine's ``max_inflight``).
    max_inflight: int | None = None


#: How often the service's engine checks its apps' connections and paused apps (seconds).
WATCH_INTERVAL = 5.0

#: The service's ``outcome_delay`` (seconds): outcomes nobody waits for are written together,
#: this long after the first of them, instead of in a transaction each: at most one
#: transaction (and fsync) per ``outcome_delay`` for any rate of asynchronous requests.
OUTCOME_DELAY = 0.02

#: In-flight bound of binary-protocol apps. The binary protocol never confirms a notification:
#: the client counts one as accepted once its quiet window (1 s) passed without an error, so
#: the in-flight bound divided by that window caps the app's throughput. This lets a binary
#: app go as fast as its client (tens of thousands a second) instead of 1,000/s.
BINARY_MAX_INFLIGHT = 50_000

#: In-flight bound of an HTTP/2 app, per connection its client may open: the streams APNs
#: lets a connection have open (its SETTINGS_MAX_CONCURRENT_STREAMS, 500 to 1,000 seen). An
#: app's rate is at most its bound over APNs' round trip, so the engine's single 1,000 held an
#: app to one connection's worth whatever its client's ``max_connections`` (10,000/s over a
#: 100 ms round trip; even on loopback, end to end was a tenth slower while the machine was
#: quiet, ``benchmarks/service_throughput.py``).
HTTP2_INFLIGHT_PER_CONNECTION = 1000


def engine_apps(
    config: ServiceConfig,
    senders: Mapping[str, Sender],
    health: Mapping[str, Callable[[], Mapping[str, object]]] | None = None,
) -> dict[str, EngineApp]:
    """Pair each configured app with its started Sender."""
    missing = sorted({a.name for a in config.apps} - set(senders))
    if missing:
        raise ValueError(f"no Sender for app(s) {', '.join(missing)}")
    return {
        a.name: EngineApp(
            sender=senders[a.name],
            bundle_id=a.bundle_id,
            protocol=a.protocol,
            token_auth=a.token_auth,
            health=(health or {}).get(a.name),
            max_inflight=_max_inflight(a.protocol, senders[a.name]),
        )
        for a in config.apps
    }


def _max_inflight(protocol: str, sender: Sender) -> int | None:
    """An app's in-flight bound: what its client can have on the wire (``None``: the engine's
    ``max_inflight``, for a Sender that does not say how many connections it opens)."""
    if protocol == "binary":
        return BINARY_MAX_INFLIGHT
    connections = getattr(sender, "max_connections", None)
    if isinstance(connections, int) and connections > 0:
        return HTTP2_INFLIGHT_PER_CONNECTION * connections
    return None


@dataclass(frozen=True, slots=True)
class Template:
    """Everything a batch's notifications share (all but the token)."""

    payload: Mapping[str, Any] | bytes
    expiry: int | None = None
    priority: int | None = None
    topic: str | None = None
    push_type: PushType | str | None = None
    collapse_id: str | None = None
    apns_id: str | None = None


class Prepared(list[Notification]):
    """The notifications :meth:`Engine.prepare` built and validated for ``app``: handed to
    :meth:`Engine.submit`, they reach an HTTP/2 client as
    :class:`~txapns.core.notification.CheckedHTTP2`, not validated a second time."""

    __slots__ = ("app",)

    def __init__(self, app: str) -> None:
        super().__init__()
        self.app = app


@dataclass(frozen=True, slots=True)
class Accepted:
    """Answer to :meth:`Engine.submit`: the job is stored (durably, except a synchronous job
    without a key, which is promised nothing until its outcomes are: see ``Spool.add_job``)."""

    job_id: str
    count: int
    #: The idempotency key had been used: this is the first submission's job; nothing new.
    duplicate: bool
    async_: bool


@dataclass(slots=True, eq=False)
class _Item:
    id: int
    job_id: str
    app: str
    notification: Notification
    send_at: float | None
    resumed: int = 0
    sent_at: float = 0.0
    #: Validated by this engine's prepare() for its app's HTTP/2 rules: the client need not
    #: validate it again (see :class:`~txapns.core.notification.CheckedHTTP2`).
    checked: bool = False


@dataclass(slots=True)
class _AppState:
    name: str
    app: EngineApp
    ready: deque[_Item] = field(default_factory=deque)
    inflight: dict[int, _Item] = field(default_factory=dict)
    #: Taken from ``ready``, being marked in flight in the spool.
    reserved: int = 0
    #: The Sender said QueueFullError; wait for a result or the retry timer.
    blocked: bool = False
    #: ``PAUSED_UNAVAILABLE`` / ``PAUSED_ENVIRONMENT`` while nothing is handed to the Sender.
    paused: str | None = None
    pause_why: str | None = None
    paused_at: float = 0.0
    #: Suspect answers (``bad_token``/``invalid_token``) waiting for the detector's verdict.
    detector: MismatchDetector = field(default_factory=MismatchDetector)
    suspects: list[tuple[_Item, Result]] = field(default_factory=list)
    #: The detector's hold on the suspect answers (armed by the engine, which owns the clock).
    suspect_timer: Timer = field(init=False)
    #: An operator resumed an environment pause: suspect answers are reported as they come.
    trust_environment: bool = False
    #: Since when the app has had work and no connection (``None``: connected or idle).
    offline_since: float | None = None
    #: Last ``unavailable`` the Sender reported (to log changes once).
    unavailable: str | None = None


class Engine:
    """Glue between the spool and the Senders. Construct, :meth:`start`, then submit."""

    def __init__(
        self,
        apps: Mapping[str, EngineApp],
        spool: SpoolBackend,
        clock: IReactorTime,
        *,
        max_inflight: int = 1000,
        drain_timeout: float = 10.0,
        retention: float = 7 * 86400.0,
        purge_interval: float = 3600.0,
        retry_delay: float = 0.1,
        metrics: ServiceMetrics | None = None,
        webhook: InvalidTokenWebhook | None = None,
        stop_senders: bool = True,
        max_schedule_ahead: float = 366 * 86400.0,
        mismatch: MismatchPolicy | None = None,
        offline_threshold: float = 60.0,
        probe_interval: float = 30.0,
        watch_interval: float = 0.0,
        outcome_delay: float = 0.0,
    ) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be at least 1")
        self.spool = spool
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self._clock = clock
        self.mismatch = mismatch or MismatchPolicy()
        self._apps = {
            name: _AppState(name, app, detector=MismatchDetector(self.mismatch))
            for name, app in apps.items()
        }
        for st in self._apps.values():
            st.suspect_timer = Timer(clock, partial(self._settle, st))
        #: Seconds an app with work may have no connection before ``/healthz`` fails.
        self.offline_threshold = offline_threshold
        #: Seconds between attempts to send for an app paused as unavailable.
        self.probe_interval = probe_interval
        #: Seconds an outcome nobody waits for may wait to be written with others. A crash
        #: meanwhile resumes those notifications as possible duplicates, as one before the
        #: outcome arrived would. 0 on a shared spool: another instance may be the one
        #: waiting for the job (it polls), and its writes batch themselves (one in flight at
        #: a time).
        self.outcome_delay = 0.0 if spool.shared else outcome_delay
        #: Seconds between watchdog rounds (:meth:`_watch`); 0: none (the service sets
        #: :data:`WATCH_INTERVAL`). Without it, an app paused as unavailable is only tried
        #: again when a result arrives, and ``offline_since`` is only noted by ``health()``.
        self.watch_interval = watch_interval
        self._watch_loop: LoopingCall | None = None
        self.max_inflight = max_inflight
        self.drain_timeout = drain_timeout
        self._stop_deadline = 0.0
        self.retention = retention
        self.purge_interval = purge_interval
        self.retry_delay = retry_delay
        self.webhook = webhook
        self.stop_senders = stop_senders
        self.max_schedule_ahead = max_schedule_ahead
        #: NEW → RECOVERING → RUNNING → STOPPING → STOPPED.
        self.state = EngineState.NEW
        #: Why the last recovery of the spool failed (it is retried), or None.
        self.recovery_error: str | None = None
        #: Cancelled together on stop: the next try of a failed recovery, the next due
        #: scheduled notification, the queue-full retry and the end-of-turn dispatch.
        self._timers = timers = Timers(clock)
        self._recovery_timer = timers.timer(self._recover)
        self._recovery_failures = 0
        self._started: Deferred[None] | None = None
        #: Cap of the delay between tries of a failed recovery.
        self.max_recovery_delay = 30.0
        self._scheduled: list[tuple[float, int, _Item]] = []
        self._sched_timer = timers.timer(self._release_due)
        self._retry_timer = timers.timer(self._retry)
        self._purge_loop: LoopingCall | None = None
        self._pump_timer = timers.timer(self._pump_pending)
        self._to_pump: set[str] = set()
        self._records: list[OutcomeRecord] = []
        #: Outcomes gathered this turn are recorded when it fires (not cancelled on stop).
        self._records_timer = Timer(clock, self._flush_records)
        self._waiters: dict[str, list[Deferred[JobView]]] = {}
        #: Outcomes still to come of jobs waited for since they were stored (wait(count=)).
        self._left: dict[str, int] = {}
        #: Of those, the jobs whose last outcome is among self._records.
        self._complete: list[str] = []
        self._writes: set[Deferred[None]] = set()
        self._drained: Deferred[None] | None = None
        self._unknown_app_items = 0
        for name in self._apps:
            self.metrics.app(name)

    # -- queries ---------------------------------------------------------------------------

    @property
    def apps(self) -> tuple[str, ...]:
        return tuple(self._apps)

    @property
    def accepting(self) -> bool:
        return self.state is EngineState.RUNNING and self.spool.available

    def _now(self) -> float:
        return self._clock.seconds()

    def gauges(self) -> dict[str, AppGauges]:
        return {
            name: AppGauges(
                queued=len(st.ready) + st.reserved,
                scheduled=sum(1 for _, _, i in self._scheduled if i.app == name),
                inflight=len(st.inflight),
                client_pending=st.app.sender.pending(),
                counters=st.app.sender.counters,
                paused=self._pause_kind(st),
            )
            for name, st in self._apps.items()
        }

    def metrics_text(self) -> str:
        return self.metrics.render(self.gauges()) + self.spool.metrics_text()

    def health(self) -> dict[str, object]:
        """The service's state for ``/healthz``: ``status`` is ``"ok"`` only while it accepts
        submissions and every app can send; an app that cannot (paused, or with work and no
        connection for ``offline_threshold`` seconds) makes it ``"unhealthy"`` and says why
        in its ``problem``."""
        apps: dict[str, object] = {}
        now = self._now()
        unhealthy = False
        for name, g in self.gauges().items():
            st = self._apps[name]
            c = st.app.sender.counters
            entry: dict[str, object] = {
                "protocol": st.app.protocol,
                "queued": g.queued,
                "scheduled": g.scheduled,
                "inflight": g.inflight,
                "client_pending": g.client_pending,
                "blocked": st.blocked,
                "connections_made": c.connections_made,
                "reconnects": c.reconnects,
                "connection_failures": c.connection_failures,
            }
            if st.app.health is not None:
                entry.update(st.app.health())
            self._observe_connectivity(st, now)
            problem = self.problem(name)
            entry["paused"] = self._pause_kind(st)
            entry["problem"] = problem
            entry["offline_since"] = st.offline_since
            answers, suspects, tokens = st.detector.counts(now)
            entry["answers"] = {
                "window": answers,
                "bad_token": suspects,
                "bad_token_tokens": tokens,
                "waiting": len(st.suspects),
            }
            unhealthy = unhealthy or problem is not None
            apps[name] = entry
        status: str = self.state
        if self.state is EngineState.RUNNING:
            status = "ok" if self.accepting else "spool"
        if status == "ok" and unhealthy:
            status = "unhealthy"
        out: dict[str, object] = {"status": status, "apps": apps}
        if self.recovery_error is not None:
            out["error"] = self.recovery_error
        if self.spool is not None:  # (some tests build an engine without one)
            out["spool"] = self.spool.health()
        return out

    def problem(self, app: str) -> str | None:
        """Why ``app`` cannot send now, or ``None`` when it can."""
        st = self._state(app)
        if st.paused is not None:
            return f"paused ({st.paused}): {st.pause_why}"
        unavailable = _sender_unavailable(st.app.sender)
        if unavailable:
            return f"paused (unavailable): {unavailable}"
        if st.offline_since is not None and self._now() - st.offline_since > self.offline_threshold:
            return (
                f"no connection to APNs for {self._now() - st.offline_since:.0f} s with "
                "notifications waiting"
            )
        return None

    def _pause_kind(self, st: _AppState) -> str | None:
        if st.paused is not None:
            return st.paused
        if _sender_unavailable(st.app.sender):
            return PAUSED_UNAVAILABLE
        if st.offline_since is not None and self._now() - st.offline_since > self.offline_threshold:
            return "offline"
        return None

    def resume(self, app: str) -> None:
        """Lift ``app``'s pause now. After an environment pause this says the environment
        is right: the held-back notifications are sent again, and their ``bad_token``
        answers are reported from now on (until the next start)."""
        st = self._state(app)
        if st.paused == PAUSED_ENVIRONMENT:
            st.trust_environment = True
            st.detector.reset()
        if st.paused is not None:
            log.info("{app}: resumed ({why})", app=app, why=st.pause_why)
        st.paused = st.pause_why = None
        self._pump_soon(app)

    @property
    def clock(self) -> IReactorTime:
        """The engine's clock (the reactor in the service)."""
        return self._clock

    def job(self, job_id: str) -> Deferred[JobView | None]:
        return self.spool.job(job_id)

    def invalid_tokens(self, app: str, since: float | None = None) -> Deferred[list[Any]]:
        self._state(app)
        d: Deferred[list[Any]] = self.spool.invalid_tokens(app, since=since)
        return d

    def check_app(self, app: str) -> None:
        """Raise :class:`UnknownAppError` unless ``app`` is served."""
        self._state(app)

    def scheduled_for_later(self, send_at: float | None) -> bool:
        """Would a notification with this ``send_at`` wait for its time (rather than be sent
        now)? The API answers such submissions asynchronously."""
        return send_at is not None and send_at > self._now()

    def _state(self, app: str) -> _AppState:
        st = self._apps.get(app)
        if st is None:
            raise UnknownAppError(app)
        return st

    # -- validation --------------------------------------------------------------------------

    def prepare(self, app: str, template: Template, tokens: Sequence[str | bytes]) -> Prepared:
        """Validate a batch for ``app`` and build its notifications; raise before storing.

        Raises :class:`UnknownAppError`, a :class:`ValidationError` for the shared fields
        (e.g. :class:`~txapns.core.errors.PayloadTooLargeError`), or :class:`RecipientError`
        naming the first bad token's index.
        """
        st = self._state(app)
        if not tokens:
            raise ValidationError("no recipients: give at least one device token")
        if template.apns_id is not None and len(tokens) > 1:
            raise ValidationError("apns_id identifies one notification: give a single token")
        topic = template.topic
        pt = template.push_type
        if isinstance(pt, str):
            try:
                pt = PushType(pt)
            except ValueError:
                raise ValidationError(
                    f"unknown push type {pt!r}; known: {', '.join(p.value for p in PushType)}"
                ) from None
        if topic is None and st.app.bundle_id is not None:
            topic = pt.topic_for(st.app.bundle_id) if pt is not None else st.app.bundle_id
        # create() encodes a mapping once (encoding it here first made it parse the result
        # again to check it).
        proto = Notification.create(
            _DUMMY_TOKEN,
            template.payload,
            expiry=template.expiry,
            priority=template.priority,
            topic=topic,
            push_type=pt,
            collapse_id=template.collapse_id,
            apns_id=template.apns_id,
        )
        if st.app.protocol == "binary":
            validate_binary(proto)
        else:
            validate_http2(proto, token_auth=st.app.token_auth)
        out = Prepared(app)
        append = out.append
        # new_apns_id: a v4 UUID's text for a third of str(uuid.uuid4())'s cost.
        new_id = new_apns_id if st.app.protocol != "binary" and proto.apns_id is None else None
        # The shared fields were validated once above; each recipient only differs in its
        # token (and apns-id), so it is a copy of proto with those two set (_readdressed:
        # dataclasses.replace, or even the frozen constructor, costs several times more, and
        # this loop runs for every recipient of a batch).
        readdressed = proto._readdressed
        for i, token in enumerate(tokens):
            try:
                raw = parse_token(token)
            except ValidationError as e:
                raise RecipientError(i, e) from None
            append(readdressed(raw, new_id() if new_id is not None else proto.apns_id))
        return out

    # -- submission ----------------------------------------------------------------------------

    def submit(
        self,
        app: str,
        notifications: Sequence[Notification],
        *,
        async_: bool = False,
        send_at: float | None = None,
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> Deferred[Accepted]:
        """Store ``notifications`` (already validated by :meth:`prepare`) and queue them.

        ``fingerprint`` (with ``idempotency_key``) identifies the request: the key reused
        for a request with another fingerprint fails with
        :class:`~txapns.service.spool.IdempotencyKeyReusedError`.

        Raises :class:`NotAcceptingError` / :class:`UnknownAppError` synchronously. The
        Deferred fires once the job is committed to the spool.
        """
        st = self._state(app)
        if not self.accepting:
            raise NotAcceptingError(
                "the spool cannot store now"
                if self.state is EngineState.RUNNING
                else "the service is starting: recovering the spool"
                + (f" (failed: {self.recovery_error}; trying again)" if self.recovery_error else "")
                if self.state is EngineState.RECOVERING
                else "the service is stopping"
                if self.state is not EngineState.NEW
                else "the service is starting"
            )
        if st.paused is not None or _sender_unavailable(st.app.sender):
            # Refused rather than stored: a caller waiting for the outcome would wait until
            # an operator acts. What the spool holds stays there.
            raise AppPausedError(app, self.problem(app) or "paused")
        if not notifications:
            raise ValidationError("no recipients: give at least one device token")
        if send_at is not None and send_at > self._now() + self.max_schedule_ahead:
            raise ValidationError(
                f"send_at is {send_at - self._now():.0f} seconds ahead; the limit is "
                f"{self.max_schedule_ahead:.0f} seconds"
            )
        items = list(notifications)
        st = self._apps[app]
        # Nothing waits before it and the in-flight window has room: store the job as in
        # flight and hand it to the client as soon as it is committed, instead of a second
        # transaction (and fsync) to mark it in flight. A crash in between leaves it in flight,
        # so it is resumed as a possible duplicate: never lost, never an unflagged duplicate.
        direct = (
            not self.spool.shared
            and send_at is None
            and self.state is EngineState.RUNNING
            and not st.ready
            and not st.blocked
            and len(items)
            <= (st.app.max_inflight or self.max_inflight) - len(st.inflight) - st.reserved
        )
        if direct:
            st.reserved += len(items)
        d = self.spool.add_job(
            app,
            items,
            now=self._now(),
            send_at=send_at,
            async_=async_,
            idempotency_key=idempotency_key,
            inflight=direct,
            fingerprint=fingerprint,
        )
        if direct:
            d.addErrback(self._direct_failed, st, len(items))
        checked = (
            isinstance(notifications, Prepared)
            and notifications.app == app
            and st.app.protocol != "binary"
        )
        return d.addCallback(self._stored, app, items, send_at, direct, checked)

    def _direct_failed(self, failure: Failure, st: _AppState, count: int) -> Failure:
        st.reserved -= count
        self._maybe_drained()
        return failure

    def _stored(
        self,
        stored: StoredJob,
        app: str,
        items: list[Notification],
        send_at: float | None,
        direct: bool = False,
        checked: bool = False,
    ) -> Accepted:
        if stored.duplicate:
            if direct:
                self._apps[app].reserved -= len(items)
                self._maybe_drained()
            log.info(
                "idempotent repeat for {app}: job {job_id}, nothing new stored",
                app=app,
                job_id=stored.job_id,
            )
            return Accepted(stored.job_id, 0, True, stored.async_)
        self.metrics.app(app).submitted += len(items)
        if self.spool.shared:
            # In the shared queue now: whichever instance has room sends it (_feed).
            return Accepted(stored.job_id, len(items), False, stored.async_)
        job_id = stored.job_id
        if direct:
            # Stored in flight: to the client now (or back to queued if stopping meanwhile).
            batch = [
                _Item(i, job_id, app, n, None, 0, 0.0, checked)
                for i, n in zip(stored.ids, items, strict=True)
            ]
            self._send_batch(None, self._apps[app], batch)
        else:
            for ident, n in zip(stored.ids, items, strict=True):
                self._enqueue(_Item(ident, job_id, app, n, send_at, 0, 0.0, checked))
            # No log line per stored job: with one notification per request that was a log
            # event (and, under twistd without a level filter, a formatted line) per request.
            self._pump_soon(app)
            self._arm_schedule()
        return Accepted(stored.job_id, len(items), False, stored.async_)

    def wait(
        self, job_id: str, *, fresh: bool = False, count: int = 0, limit: float | None = None
    ) -> Deferred[JobView]:
        """Fires with the job's view once every notification has an outcome.

        If the engine stops first, fires with the (unfinished) view at that moment; and so
        it does after ``limit`` seconds, if given (the view then read durably: see
        :meth:`_wait_expired`).
        ``fresh``: the job was stored by this engine in this reactor turn, so none of its
        outcomes can be recorded yet: its view is read once, when they are (not also now).
        ``count`` (with ``fresh``): its notifications; the view is then read in the same spool
        batch as the last outcome, instead of in a batch of its own after it (a view of more
        than ``VIEW_ROWS_HERE`` notifications then takes one more, on the spool's thread:
        :meth:`txapns.service.spool.Spool.job`).
        """
        d: Deferred[JobView] = Deferred()
        self._waiters.setdefault(job_id, []).append(d)
        if limit is not None:
            # Cancelled once the waiter fires, however it does (the stop answers them all).
            timer = self._clock.callLater(limit, self._wait_expired, job_id, d, limit)
            d.addBoth(self._wait_ended, timer)
        if fresh and count > 0 and not self.spool.shared and self.state is EngineState.RUNNING:
            self._left.setdefault(job_id, count)
        if not fresh or self.spool.shared or self.state is not EngineState.RUNNING:
            self._read_for_waiters(job_id)
        return d

    @staticmethod
    def _wait_ended(result: object, timer: IDelayedCall) -> object:
        cancel_call(timer)
        return result

    def _wait_expired(self, job_id: str, d: Deferred[JobView], limit: float) -> None:
        """A wait's limit passed before the job was done (APNs unreachable, the disk full…):
        the waiter gets the job as it stands. Read ``durable``: a synchronous job was
        stored without an fsync of its own (nothing was promised until its outcomes were),
        and this answer promises it."""
        waiting = self._waiters.get(job_id, [])
        if d not in waiting or self.state is EngineState.STOPPED:
            return  # answered already, or by the stop once the spool is closed (_close)
        waiting.remove(d)
        if not waiting:
            del self._waiters[job_id]
            self._left.pop(job_id, None)
        log.info(
            "job {job_id} not done after {limit:g} s: its synchronous request is answered "
            "with the job as it stands",
            job_id=job_id,
            limit=limit,
        )
        self.spool.job(job_id, durable=True).addCallbacks(
            self._expired_read, d.errback, callbackArgs=(job_id, d)
        )

    @staticmethod
    def _expired_read(view: JobView | None, job_id: str, d: Deferred[JobView]) -> None:
        if view is None:  # purged within the wait: only a done job can be
            d.errback(Failure(SpoolError(f"job {job_id} is no longer in the spool")))
        else:
            d.callback(view)

    def _read_for_waiters(self, job_id: str) -> None:
        """Read the job; its waiters fire if it is done (or the engine stopped)."""
        self.spool.job(job_id).addCallbacks(
            self._check_waiters, self._waiter_read_failed, errbackArgs=(job_id,)
        )

    def _check_waiters(self, view: JobView | None) -> None:
        if view is not None and (view.done or self.state is EngineState.STOPPED):
            self._fire_waiters(view)

    def _fire_waiters(self, view: JobView) -> None:
        self._left.pop(view.job_id, None)
        for d in self._waiters.pop(view.job_id, []):
            d.callback(view)

    def _waiter_read_failed(self, failure: Failure, job_id: str) -> None:
        self._left.pop(job_id, None)
        for d in self._waiters.pop(job_id, []):
            d.errback(failure)

    def _job_finished(self, job_id: str) -> None:
        if job_id in self._waiters:
            self._read_for_waiters(job_id)

    def add_feedback(self, app: str, entries: Sequence[tuple[str, float | None]]) -> Deferred[None]:
        """Record dead tokens from the binary feedback service: ``(token hex, time)`` tuples."""
        self._state(app)
        self.metrics.app(app).invalid_by_kind[EvidenceKind.FEEDBACK] += len(entries)
        d = self.spool.add_invalid_tokens(app, entries, now=self._now(), source="feedback")
        if self.webhook is not None:
            for token, ts in entries:
                self.webhook.notify(app, token, ts, "feedback", None, EvidenceKind.FEEDBACK)
        return d

    # -- dispatch --------------------------------------------------------------------------------

    def _enqueue(self, item: _Item) -> None:
        if item.send_at is not None and item.send_at > self._now():
            heapq.heappush(self._scheduled, (item.send_at, item.id, item))
        else:
            self._apps[item.app].ready.append(item)

    def _arm_schedule(self) -> None:
        if self.state is not EngineState.RUNNING or not self._scheduled:
            return
        due = self._scheduled[0][0]
        when = self._sched_timer.when()
        if when is not None and when <= due:
            return
        self._sched_timer.start(max(0.0, due - self._now()))

    def _release_due(self) -> None:
        now = self._now()
        touched: set[str] = set()
        while self._scheduled and self._scheduled[0][0] <= now:
            _, _, item = heapq.heappop(self._scheduled)
            self._apps[item.app].ready.append(item)
            touched.add(item.app)
        for name in touched:
            self._pump_soon(name)
        self._arm_schedule()

    def _pump_soon(self, name: str) -> None:
        """Dispatch for ``name`` at the end of this turn: slots freed by many results in one
        turn are filled with one spool write, not one per result."""
        self._to_pump.add(name)
        if self.state is EngineState.RUNNING:
            self._pump_timer.start_unless_armed(0)

    def _pump_pending(self) -> None:
        names, self._to_pump = self._to_pump, set()
        for name in names:
            self._pump(name)

    def _pump(self, name: str) -> None:
        st = self._apps[name]
        if self.state is not EngineState.RUNNING or st.blocked or st.paused or not st.ready:
            return
        if _sender_unavailable(st.app.sender):
            return  # the client holds what it has; the watchdog pumps once it can send
        limit = st.app.max_inflight or self.max_inflight
        room = limit - len(st.inflight) - st.reserved
        if room <= 0:
            return
        batch = [st.ready.popleft() for _ in range(min(room, len(st.ready)))]
        st.reserved += len(batch)
        d = self.spool.mark_inflight([i.id for i in batch], now=self._now())
        d.addCallbacks(
            self._send_batch,
            self._mark_failed,
            callbackArgs=(st, batch),
            errbackArgs=(st, batch),
        )

    def _mark_failed(self, failure: Failure, st: _AppState, batch: list[_Item]) -> None:
        st.reserved -= len(batch)
        log.failure(
            "could not mark {count} notifications of {app} in flight; retrying later",
            failure,
            count=len(batch),
            app=st.name,
        )
        st.ready.extendleft(reversed(batch))
        st.blocked = True
        self._arm_retry()

    def _send_batch(self, _: None, st: _AppState, batch: list[_Item]) -> None:
        st.reserved -= len(batch)
        back: list[_Item] = []
        send_to = st.app.sender.send_to
        # The explicit path for what prepare() validated (HTTP2Client.send_checked).
        send_checked = getattr(st.app.sender, "send_checked", None)
        token_auth = st.app.token_auth
        on_result = self._on_result
        inflight = st.inflight
        app_metrics = self.metrics.app(st.name)
        now = self._now()
        # Paused meanwhile (or handed over directly at submission): back to the queue.
        held = st.paused is not None or _sender_unavailable(st.app.sender) is not None
        for item in batch:
            if self.state is not EngineState.RUNNING or st.blocked or held:
                back.append(item)
                continue
            # In flight before the hand-over: a Sender may call back at once.
            item.sent_at = now
            inflight[item.id] = item
            try:
                # A callback, not a Deferred each: this runs for every notification.
                if item.checked and send_checked is not None:
                    send_checked(
                        CheckedHTTP2(item.notification, token_auth), partial(on_result, st, item)
                    )
                else:
                    send_to(item.notification, partial(on_result, st, item))
            except Exception as e:
                del inflight[item.id]
                self._not_taken(st, item, e, back)
                continue
            app_metrics.sent += 1
        if back:
            st.ready.extendleft(reversed(back))
            self._requeue(st, back)
        self._maybe_drained()

    def _not_taken(self, st: _AppState, item: _Item, e: Exception, back: list[_Item]) -> None:
        """``send_to`` raised: back to the queue if the client is full, else finished."""
        if isinstance(e, QueueFullError):
            st.blocked = True
            back.append(item)
            self._arm_retry()
        elif isinstance(e, CircuitOpenError):
            back.append(item)
            self._pause(st, PAUSED_UNAVAILABLE, str(e))
        elif isinstance(e, ValidationError):
            self._finish(
                st,
                item,
                Result.rejected_for(item.notification, str(e), local="validation"),
            )
        else:
            log.failure(
                "the {app} client raised on send of {token}",
                Failure(e),
                app=st.name,
                token=item.notification.short_token,
            )
            self._finish(
                st,
                item,
                Result.rejected_for(
                    item.notification, f"client error: {type(e).__name__}", local="error"
                ),
            )

    def _requeue(self, st: _AppState, items: list[_Item]) -> None:
        d = self.spool.requeue([i.id for i in items], now=self._now())
        self._track(d, "requeue", st.name)

    def _arm_retry(self) -> None:
        if self.state is EngineState.RUNNING:
            self._retry_timer.start_unless_armed(self.retry_delay)

    def _retry(self) -> None:
        for st in self._apps.values():
            st.blocked = False
            self._pump_soon(st.name)

    def _on_result(self, st: _AppState, item: _Item, result: Result) -> None:
        st.inflight.pop(item.id, None)
        if (
            self.state is not EngineState.RUNNING
            and result.outcome is Outcome.REJECTED
            and result.local == "stopped"
        ):
            # The client is stopping and never sent it: leave it in the spool for next time.
            self.metrics.app(st.name).requeued += 1
            self._requeue(st, [item])
        elif _not_sent_unavailable(result):
            # Not the notification's fault: back to the spool, and the app pauses.
            self._pause(st, PAUSED_UNAVAILABLE, f"APNs refused to send: {result}")
            self._hold_back(st, [item], held_back=False)
        elif result.local in NOT_SENT and result.outcome is Outcome.REJECTED:
            self._not_sent(st, item, result)
        else:
            self._judge(st, item, result)
        st.blocked = False
        self._pump_soon(st.name)
        self._maybe_drained()

    def _not_sent(self, st: _AppState, item: _Item, result: Result) -> None:
        """The client could not reach APNs within its ``max_queue_time``: the notification
        never left, so it stays in the spool and is handed over again, until its expiration
        has passed (an expiration of 0 means now or never: finished at once)."""
        expiry = item.notification.expiry
        if expiry is None or expiry > self._now():
            self._hold_back(st, [item], held_back=False)
            return
        reason = f"expired before it could be sent ({result.reason})"
        self._finish(st, item, result._replace(reason=reason))

    # -- invalid-token evidence and pauses -------------------------------------------------

    def _judge(self, st: _AppState, item: _Item, result: Result) -> None:
        """Finish ``item``, unless its answer is a suspect (``bad_token``/``invalid_token``)
        that must wait for the detector's verdict on the app's recent answers."""
        now = self._now()
        kind = evidence_kind(result)
        suspect = kind in SUSPECT_KINDS
        if answered_by_apns(result):
            st.detector.observe(now, item.notification.token, suspect)
        if suspect and not st.trust_environment and self.mismatch.enabled:
            st.suspects.append((item, result))
            if st.paused == PAUSED_ENVIRONMENT:
                self._hold_back(st, [item for item, _ in st.suspects])
                st.suspects.clear()
            else:
                self._decide(st, now)
            return
        self._finish(st, item, result)
        if st.suspects:
            self._decide(st, now)

    def _decide(self, st: _AppState, now: float, *, settle: bool = False) -> None:
        verdict = st.detector.verdict(now)
        if verdict is Verdict.MISMATCH:
            kind = evidence_kind(st.suspects[0][1]) or EvidenceKind.BAD_TOKEN
            self._pause(st, PAUSED_ENVIRONMENT, mismatch_message(kind, *st.detector.counts(now)))
            held = [item for item, _ in st.suspects]
            st.suspects.clear()
            self._hold_back(st, held)
        elif verdict is Verdict.CLEAN or settle:
            publish = verdict is Verdict.CLEAN
            done, st.suspects = st.suspects, []
            if not publish:
                self.metrics.app(st.name).tokens_held_back += len(done)
                log.warn(
                    "{app}: {count} tokens rejected as BadDeviceToken are not reported as "
                    "invalid: most recent answers are such rejections, but from too few "
                    "tokens to tell a wrong `environment` from dead tokens",
                    app=st.name,
                    count=len(done),
                )
            for item, result in done:
                self._finish(st, item, result, publish=publish)
        elif not st.suspect_timer.armed:
            st.suspect_timer.start(self.mismatch.hold)
            return
        if not st.suspects:
            st.suspect_timer.cancel()

    def _settle(self, st: _AppState) -> None:
        if st.suspects:
            self._decide(st, self._now(), settle=True)

    def _pause(self, st: _AppState, kind: str, why: str) -> None:
        if st.paused is None:
            log.error(
                "{app}: paused: {why}; its notifications stay in the spool",
                app=st.name,
                why=why,
            )
            self.metrics.app(st.name).pauses[kind] += 1
        elif st.paused == PAUSED_ENVIRONMENT and kind != PAUSED_ENVIRONMENT:
            return  # only an operator lifts an environment pause
        st.paused, st.pause_why, st.paused_at = kind, why, self._now()

    def _hold_back(self, st: _AppState, items: list[_Item], *, held_back: bool = True) -> None:
        """Back to the spool (and the front of the queue), not finished: sent again once the
        app is resumed."""
        m = self.metrics.app(st.name)
        m.requeued += len(items)
        if held_back:
            m.tokens_held_back += len(items)
        if self.state is EngineState.RUNNING:
            st.ready.extendleft(reversed(items))
        self._requeue(st, items)

    def _observe_connectivity(self, st: _AppState, now: float) -> None:
        health = getattr(st.app.sender, "health", None)
        connections = health().get("connections") if callable(health) else None
        has_work = bool(st.ready or st.inflight or st.reserved or st.app.sender.pending())
        if isinstance(connections, int) and connections == 0 and has_work:
            if st.offline_since is None:
                st.offline_since = now
        else:
            st.offline_since = None

    def _watch(self) -> None:
        """Every ``watch_interval``: track connectivity, log a Sender's pauses, and retry an
        app paused as unavailable every ``probe_interval``."""
        now = self._now()
        for st in self._apps.values():
            self._observe_connectivity(st, now)
            unavailable = _sender_unavailable(st.app.sender)
            if unavailable != st.unavailable:
                if unavailable:
                    log.error(
                        "{app}: paused: {why}; its notifications stay in the spool",
                        app=st.name,
                        why=unavailable,
                    )
                    self.metrics.app(st.name).pauses[PAUSED_UNAVAILABLE] += 1
                else:
                    log.info("{app}: the client can send again", app=st.name)
                st.unavailable = unavailable
            if st.paused == PAUSED_UNAVAILABLE and now - st.paused_at >= self.probe_interval:
                log.info("{app}: trying to send again", app=st.name)
                st.paused = st.pause_why = None
            if st.ready:
                self._pump_soon(st.name)

    def _finish(self, st: _AppState, item: _Item, result: Result, *, publish: bool = True) -> None:
        now = self._now()
        latency = result.latency
        if latency is None and item.sent_at:
            latency = now - item.sent_at
        m = self.metrics.app(st.name)
        m.record(result, latency)
        record = OutcomeRecord.from_result(item.id, item.job_id, st.name, result)
        if record.token_invalid and not publish:
            record = record._replace(token_invalid=False)
        elif record.token_invalid:
            log.debug(
                "{app}: token {token} is no longer valid ({status} {reason})",
                app=st.name,
                token=item.notification.short_token,
                status=result.status,
                reason=result.reason,
            )
            m.invalid_by_kind[record.kind or "unspecified"] += 1
            if self.webhook is not None:
                self.webhook.notify(
                    st.name,
                    item.notification.token_hex,
                    record.timestamp,
                    result.reason,
                    result.status,
                    record.kind,
                )
        self._records.append(record)
        left = self._left.get(item.job_id)
        if left is not None:
            if left > 1:
                self._left[item.job_id] = left - 1
            else:
                del self._left[item.job_id]
                self._complete.append(item.job_id)
        # Someone waits for this job's outcomes (a synchronous request): written now. Otherwise
        # they wait outcome_delay for company, and go in a transaction of their own (or the one
        # the turn's calls share). They used to join the next submission's transaction instead:
        # one fsync for both at one connection, but each request's commit then carried the
        # record's six statements. Written apart, one connection's one-notification requests
        # took about 8 % less CPU each (benchmarks/service_throughput.py --h1load), for at most
        # one more fsync per outcome_delay.
        delay = 0.0 if item.job_id in self._waiters else self.outcome_delay
        when = self._records_timer.when()
        if when is None or (delay == 0.0 and when > self._clock.seconds()):
            self._records_timer.start(delay)

    def _flush_records(self) -> None:
        """Record the outcomes gathered this turn with one spool operation."""
        self._records_timer.cancel()
        records, self._records = self._records, []
        if not records:
            return
        # Jobs a request waits for, finished by these records: read in the same batch (one
        # transaction, after the outcomes), not in a later one of their own; a big one's
        # view in one more, on the spool's thread (Spool.job).
        complete, self._complete = self._complete, []
        read_now = frozenset(job_id for job_id in complete if job_id in self._waiters)
        d = self.spool.record_outcomes(records, now=self._now())
        d.addCallback(self._recorded, read_now)
        self._track(
            d, f"record {len(records)} outcomes", ", ".join(sorted({r.app for r in records}))
        )
        for job_id in read_now:
            self._read_for_waiters(job_id)

    def _recorded(self, finished: list[str], read_now: frozenset[str]) -> None:
        for job_id in finished:
            if job_id not in read_now:  # already read in that batch, after the outcomes
                self._job_finished(job_id)

    def _track(self, d: Deferred[Any], what: str, app: str) -> None:
        tracked: Deferred[None] = d.addCallbacks(
            lambda _: None, self._write_failed, errbackArgs=(what, app)
        )
        self._writes.add(tracked)
        tracked.addBoth(self._untrack, tracked)

    def _untrack(self, _: object, d: Deferred[None]) -> None:
        self._writes.discard(d)

    def _write_failed(self, failure: Failure, what: str, app: str) -> None:
        # The row stays in flight in the spool: a restart resumes it (counted as possible
        # duplicate), so nothing is lost; the failure is logged, not hidden.
        if failure.check(OutcomesHeldError):
            # Not written within the spool's time limit (an outage, or a slow Redis): held in
            # memory and written when it answers.
            log.warn(
                "spool: could not {what} for {app} yet: {why}",
                what=what,
                app=app,
                why=failure.getErrorMessage(),
            )
            return
        log.failure("spool: could not {what} for {app}", failure, what=what, app=app)

    # -- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> Deferred[None]:
        """Start accepting, and resume what the spool holds unfinished."""
        if self.state is not EngineState.NEW:
            raise RuntimeError(f"engine already {self.state}")
        self.state = EngineState.RECOVERING
        started = self._started = Deferred()
        self._recover()  # may have recovered, and fired ``started``, already
        return started

    def _recover(self) -> None:
        """Resume the spool's unfinished work. Until that has worked the engine takes no
        submissions and ``/healthz`` answers 503 (``recovering``): new work accepted over
        unrecovered work would be served while that waits for ever. A failed recovery
        (a corrupt page, an I/O error, the backend down) is retried, never skipped."""
        d = self.spool.recover(now=self._now())
        d.addCallbacks(self._recovered, self._recovery_failed)

    def _recovery_failed(self, failure: Failure) -> None:
        if self.state is not EngineState.RECOVERING:
            return
        self._recovery_failures += 1
        self.recovery_error = f"spool recovery failed: {failure.getErrorMessage()}"
        delay = min(self.max_recovery_delay, 0.5 * 2 ** min(self._recovery_failures - 1, 16))
        log.failure(
            "could not recover the spool; taking no submissions; trying again in {delay:g} s",
            failure,
            delay=delay,
        )
        self._recovery_timer.start(delay)

    def _recovered(self, recovery: Recovery) -> None:
        if self.state is not EngineState.RECOVERING:
            return  # stopped meanwhile: everything stays in the spool for the next start
        self.state = EngineState.RUNNING
        if self.recovery_error is not None:
            log.info("spool recovered after {count} failed tries", count=self._recovery_failures)
            self.recovery_error = None
        if self.watch_interval > 0:
            self._watch_loop = LoopingCall(self._watch)
            self._watch_loop.clock = self._clock
            self._watch_loop.start(self.watch_interval, now=False)
        if self.purge_interval > 0:
            self._purge_loop = LoopingCall(self._purge)
            self._purge_loop.clock = self._clock
            loop_done = self._purge_loop.start(self.purge_interval, now=False)
            loop_done.addErrback(self._purge_loop_failed)
        for name, n in recovery.resumed_by_app.items():
            self.metrics.app(name).resumed_maybe_duplicate += n
        unknown: dict[str, int] = {}
        for s in recovery.notifications:
            if s.app not in self._apps:
                unknown[s.app] = unknown.get(s.app, 0) + 1
                continue
            # Counted as submitted in this process, as its outcomes will be: otherwise
            # accepted would outnumber submitted after a restart.
            self.metrics.app(s.app).submitted += 1
            self._enqueue(_Item(s.id, s.job_id, s.app, s.notification, s.send_at, s.resumed))
        for name, n in unknown.items():
            log.warn(
                "spool holds {count} unfinished notifications for {app}, which is no longer "
                "configured; they stay in the spool",
                count=n,
                app=name,
            )
        self._unknown_app_items = sum(unknown.values())
        if recovery.notifications:
            log.info(
                "resumed {count} unfinished notifications from the spool; {inflight} were in "
                "flight at the stop and may be delivered twice",
                count=len(recovery.notifications) - self._unknown_app_items,
                inflight=recovery.resumed_inflight,
            )
        for name in self._apps:
            self._pump_soon(name)
        self._arm_schedule()
        if self.spool.shared:
            self.spool.start_consuming(
                ConsumerHooks(self._feed, self._room, self._waiters.keys, self._job_finished)
            )
        started, self._started = self._started, None
        if started is not None:
            started.callback(None)

    def _feed(self, app: str, items: Sequence[SpooledNotification]) -> None:
        """Work a shared spool read for this instance (entries delivered before count as
        possible duplicates)."""
        st = self._apps.get(app)
        if st is None:
            return
        resumed = 0
        for s in items:
            st.ready.append(_Item(s.id, s.job_id, app, s.notification, None, s.resumed))
            resumed += s.resumed > 0
        if resumed:
            self.metrics.app(app).resumed_maybe_duplicate += resumed
        self._pump_soon(app)

    def _room(self, app: str) -> int:
        """How many more notifications of ``app`` this instance takes from a shared spool."""
        st = self._apps.get(app)
        if st is None or self.state is not EngineState.RUNNING:
            return 0
        limit = st.app.max_inflight or self.max_inflight
        return limit - len(st.inflight) - st.reserved - len(st.ready)

    def purge(self) -> Deferred[int]:
        """Delete finished jobs older than the retention period now."""
        return self.spool.purge(before=self._now() - self.retention)

    def _purge(self) -> Deferred[None]:
        def done(count: int) -> None:
            if count:
                log.info("purged {count} finished notifications from the spool", count=count)

        def failed(failure: Failure) -> None:
            log.failure("spool purge failed; will try again", failure)

        return self.purge().addCallbacks(done, failed)

    def _purge_loop_failed(self, failure: Failure) -> None:
        log.failure("the spool purge loop stopped", failure)

    def _maybe_drained(self) -> None:
        if self._drained is None:
            return
        if any(st.inflight or st.reserved for st in self._apps.values()):
            return
        d, self._drained = self._drained, None
        d.callback(None)

    def stop(self, timeout: float | None = None) -> Deferred[None]:
        """Stop accepting, drain in flight, stop Senders, close spool: all within ``timeout``
        seconds (default ``drain_timeout``)."""
        budget = self.drain_timeout if timeout is None else max(0.0, timeout)
        if self.state in (EngineState.STOPPING, EngineState.STOPPED):
            raise RuntimeError(f"engine already {self.state}")
        self.state = EngineState.STOPPING
        self._timers.cancel_all()
        started, self._started = self._started, None
        if started is not None:
            started.callback(None)  # never recovered: everything stays in the spool
        for loop in (self._purge_loop, self._watch_loop):
            if loop is not None and loop.running:
                loop.stop()
        for st in self._apps.values():
            # Answers still waiting for a verdict get one now (reported or held back).
            st.suspect_timer.cancel()
            if st.suspects:
                self._decide(st, self._now(), settle=True)
        waiting = sum(len(st.ready) for st in self._apps.values()) + len(self._scheduled)
        log.info(
            "stopping: {inflight} in flight to drain (up to {timeout:.1f} s); {waiting} stay in "
            "the spool",
            inflight=sum(len(st.inflight) + st.reserved for st in self._apps.values()),
            timeout=budget,
            waiting=waiting,
        )
        drained: Deferred[None] = Deferred()
        self._drained = drained
        timer = self._clock.callLater(budget, self._drain_deadline)
        # drain_timeout bounds the whole stop, clients included: a container's stop grace
        # period (10 s by default) must not run out while an unreachable app waits twice.
        self._stop_deadline = self._clock.seconds() + budget
        self._maybe_drained()

        def cancel_timer(_: None) -> None:
            if timer.active():
                timer.cancel()

        drained.addCallback(cancel_timer)
        drained.addCallback(self._stop_senders)
        drained.addCallback(self._flush_writes)
        drained.addCallback(self._close)
        return drained

    def _drain_deadline(self) -> None:
        left = sum(len(st.inflight) + st.reserved for st in self._apps.values())
        log.warn(
            "drain deadline reached with {count} notifications still in flight; stopping the "
            "clients resolves them",
            count=left,
        )
        if self._drained is not None:
            d, self._drained = self._drained, None
            d.callback(None)

    def _stop_senders(self, _: None) -> Deferred[Any] | None:
        if not self.stop_senders:
            return None
        stops: list[Deferred[None]] = []
        left = max(0.0, self._stop_deadline - self._clock.seconds())
        for st in self._apps.values():
            d = st.app.sender.stop(timeout=left)
            d.addErrback(self._sender_stop_failed, st.name)
            stops.append(d)
        return DeferredList(stops)

    def _sender_stop_failed(self, failure: Failure, app: str) -> None:
        # Logged, and the stop goes on: the spool must still be flushed and closed.
        log.failure("the {app} client failed to stop cleanly", failure, app=app)

    def _flush_writes(self, _: object) -> Deferred[Any]:
        self._flush_records()
        d: Deferred[Any] = self._at_most(DeferredList(list(self._writes)), self.drain_timeout)
        if self.webhook is not None:
            webhook_done = self.webhook.stop()
            return gatherResults([d, webhook_done])
        return d

    def _at_most(self, d: Deferred[Any], seconds: float) -> Deferred[None]:
        """Fires when ``d`` does or after ``seconds``, whichever is first, leaving ``d``
        alone: a spool write that keeps failing (disk full, retried) must not hold the stop
        for ever; closing the spool gives it a last try."""
        out: Deferred[None] = Deferred()

        def done(_: object = None) -> None:
            cancel_call(timer)
            if not out.called:
                out.callback(None)

        timer = self._clock.callLater(seconds, done)
        d.addBoth(done)
        return out

    def _close(self, _: object) -> Deferred[None]:
        self.state = EngineState.STOPPED
        pending = list(self._waiters)
        if not pending:
            return self.spool.close()
        # Synchronous requests still waiting get their job as it stands (202). Read now,
        # answered once the spool is closed: their jobs were committed without an fsync of
        # their own (Spool.add_job), and closing syncs the journal before the 202 promises
        # them.
        reads = DeferredList([self.spool.job(job_id) for job_id in pending], consumeErrors=True)

        def close(results: list[tuple[bool, Any]]) -> Deferred[None]:
            def answer(closed: object) -> object:
                for job_id, (ok, value) in zip(pending, results, strict=True):
                    if ok and value is None:  # not in the spool: no view to answer with
                        missing = SpoolError(f"job {job_id} is not in the spool")
                        self._waiter_read_failed(Failure(missing), job_id)
                    elif ok:
                        self._check_waiters(value)
                    else:
                        self._waiter_read_failed(value, job_id)
                return closed

            return self.spool.close().addBoth(answer)

        return reads.addCallback(close)


def _sender_unavailable(sender: Sender) -> str | None:
    """Why the Sender cannot send now (its credential refused, TLS failing), if it says."""
    why = getattr(sender, "unavailable", None)
    return why if isinstance(why, str) and why else None
