"""The durable spool: every notification the API accepted, and what became of it, in SQLite.

Two layers:

* :class:`SpoolStore` is plain synchronous SQLite, testable directly. Each public method is
  one transaction when called on its own; :meth:`SpoolStore.run_batch` runs many operations
  in one transaction (each in its own savepoint, so one failing operation does not undo the
  others).
* :class:`Spool` is the asynchronous face the engine and the API use. It collects every
  operation requested during one reactor turn into one batch: one transaction, committed on
  the reactor thread, and one ``fsync`` for everything that turn produced, run there while
  the disk's fsyncs are quick, else by a *runner* (a thread pool in production,
  :func:`inline_runner` in tests), so the API can accept
  thousands of notifications a second while each request still waits for its own commit.
  That turn's jobs without an idempotency key are one operation (:meth:`SpoolStore.add_jobs`);
  a synchronous one, answered only with its outcomes, is committed without an ``fsync`` of its
  own (see :meth:`SpoolStore.run_batch`).

Durability: WAL journal with ``synchronous=FULL`` by default. In WAL mode ``NORMAL`` already
survives a killed process, but not a power loss or kernel crash: the last transactions could
vanish after the API said "stored". Since writes are batched per reactor turn, FULL costs one
``fsync`` per batch, not per notification, so the stronger promise is cheap. The connection
itself commits with ``NORMAL``; :meth:`SpoolStore.sync_wal` is FULL's ``fsync`` of the WAL,
run before a batch's Deferreds fire. One difference: a failed COMMIT under FULL is
rolled back, while a failed :meth:`SpoolStore.sync` leaves its transactions committed, maybe
on disk or not, so the store then refuses all work until a restart (:attr:`SpoolStore.broken`).
The connection uses ``locking_mode=EXCLUSIVE``: a second service started on the same spool
fails at once instead of resuming (and re-sending) the first one's notifications.

Notification states: ``queued`` → ``inflight`` (handed to a client) → ``accepted`` |
``rejected`` | ``unknown``. :meth:`SpoolStore.recover` returns every ``queued`` or
``inflight`` row; rows that were in flight at a crash may already have reached APNs, so they
are counted (``resumed`` column, :attr:`Recovery.resumed_inflight`) as possible duplicates.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, Protocol, TypeVar

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from .._timers import Timer
from ..core.errors import APNsError
from ..core.notification import Notification, PushType
from ..core.result import Outcome, Result
from ..core.token_evidence import evidence_kind

_T = TypeVar("_T")
log = Logger()

#: Rows in one multi-row statement at most (see SpoolStore._rows_at_once).
_ROWS_PER_STATEMENT = 500
#: Up to this many rows, a statement holds exactly the rows it writes; beyond, what is left
#: under _ROWS_PER_STATEMENT is written 256, 128 … rows a statement (see _rows_at_once).
_EXACT_ROWS = 32
#: The connection's cache of prepared statements: each kind of statement has up to
#: _EXACT_ROWS + 4 shapes (a few MB at most); the sqlite3 module's default is 128.
_STATEMENT_CACHE = 512
#: ``UPDATE … FROM`` (SQLite 3.33, 2020): the jobs' counts for many jobs in one statement. A
#: single job (one request's outcomes) and an older SQLite take the plain ``UPDATE``, a
#: statement step per job: for one row it is the cheaper statement.
_UPDATE_FROM = sqlite3.sqlite_version_info >= (3, 33, 0)

QUEUED = "queued"
INFLIGHT = "inflight"
FINISHED_STATES = (Outcome.ACCEPTED.value, Outcome.REJECTED.value, Outcome.UNKNOWN.value)
STATES = (QUEUED, INFLIGHT, *FINISHED_STATES)

SCHEMA_VERSION = "3"
#: The jobs table. Why this shape (schema 3): a one-notification request's commit is a few
#: pages of WAL, each written and synced before the answer, so every B-tree a job touches
#: counts. The key is the table (``WITHOUT ROWID``: no separate index of the text ``id``);
#: the idempotency keys' index holds only the jobs that have one; and a job's notifications
#: are found by their ids (``first_id`` … ``first_id + total - 1``: a job's rows take
#: consecutive ids, in the one transaction that stores it) instead of an index of
#: ``notifications.job_id``, which every notification wrote to.
_JOBS_TABLE = """ (
    id TEXT PRIMARY KEY,
    app TEXT NOT NULL,
    created REAL NOT NULL,
    idempotency_key TEXT,
    fingerprint TEXT,
    async INTEGER NOT NULL,
    total INTEGER NOT NULL,
    remaining INTEGER NOT NULL,
    status TEXT NOT NULL,
    finished REAL,
    first_id INTEGER NOT NULL
) WITHOUT ROWID"""
_JOBS_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs (app, idempotency_key)
    WHERE idempotency_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (finished) WHERE status = 'done';
"""
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs{_JOBS_TABLE};
{_JOBS_INDEXES}
CREATE TABLE IF NOT EXISTS notifications (
    id INTEGER PRIMARY KEY,
    job_id TEXT NOT NULL,
    idx INTEGER NOT NULL,
    app TEXT NOT NULL,
    token TEXT NOT NULL,
    payload BLOB NOT NULL,
    fields TEXT NOT NULL,
    send_at REAL,
    state TEXT NOT NULL,
    status INTEGER,
    reason TEXT,
    apns_id TEXT,
    timestamp REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    resumed INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS notifications_open ON notifications (state)
    WHERE state IN ('queued', 'inflight');
CREATE TABLE IF NOT EXISTS invalid_tokens (
    app TEXT NOT NULL,
    token TEXT NOT NULL,
    timestamp REAL,
    reason TEXT,
    status INTEGER,
    source TEXT NOT NULL,
    reported_at REAL NOT NULL,
    kind TEXT,
    PRIMARY KEY (app, token)
);
CREATE INDEX IF NOT EXISTS invalid_tokens_reported ON invalid_tokens (app, reported_at);
"""


#: Schema migrations: from version → (statements, to version). 1 → 2 adds the invalid-token
#: feed's ``kind`` of evidence (see :mod:`txapns.core.token_evidence`), filled in for the rows
#: an older version wrote from what they recorded.
_MIGRATIONS: dict[str, tuple[tuple[str, ...], str]] = {
    "1": (
        (
            "ALTER TABLE invalid_tokens ADD COLUMN kind TEXT",
            "UPDATE invalid_tokens SET kind = CASE WHEN source = 'feedback' THEN 'feedback'"
            " WHEN status = 8 THEN 'invalid_token' WHEN reason = 'BadDeviceToken'"
            " THEN 'bad_token' ELSE 'unregistered' END",
        ),
        "2",
    ),
    # 2 → 3: the jobs table becomes its key, with its notifications' first id (see
    # _JOBS_TABLE); SpoolStore._migrate first checks that each job's notifications are its
    # total of consecutive ids (_check_consecutive_ids).
    "2": (
        (
            f"CREATE TABLE jobs_3{_JOBS_TABLE}",
            "INSERT INTO jobs_3 SELECT id, app, created, idempotency_key, fingerprint, async,"
            " total, remaining, status, finished,"
            " coalesce((SELECT min(n.id) FROM notifications n WHERE n.job_id = jobs.id), 0)"
            " FROM jobs",
            "DROP TABLE jobs",
            "ALTER TABLE jobs_3 RENAME TO jobs",
            *(i for i in _JOBS_INDEXES.split(";") if i.strip()),
            "DROP INDEX IF EXISTS notifications_job",
        ),
        "3",
    ),
}


class SpoolError(APNsError):
    """The spool cannot be opened or used."""


class SpoolClosedError(SpoolError):
    """The spool was closed; it takes no more operations."""


class SpoolUnavailableError(APNsError):
    """The spool cannot store or read right now (e.g. Redis is unreachable); try again later.

    The API answers 503 with ``Retry-After`` for it. Either backend raises it; it lives here
    with the other values both backends share (:mod:`.backend` gives it too).
    """

    retry_after = 5


class OutcomesHeldError(SpoolUnavailableError):
    """Outcomes the spool did not write within its time limit and holds in memory, writing
    them when its store answers (the Redis spool's ``write_timeout``: an outage, or a slow
    Redis). Nothing is lost and the spool keeps trying, so the engine warns instead of
    logging an error; a write that fails for good is logged as an error by the spool."""


class IdempotencyKeyReusedError(APNsError):
    """The idempotency key names an earlier job whose request was different: nothing stored.

    Raised by ``add_job`` when both requests carry a fingerprint and they differ."""

    def __init__(self, job_id: str) -> None:
        super().__init__(
            f"the idempotency key was used for a different request (job {job_id}); "
            "use a new key for a new request"
        )
        self.job_id = job_id


# --- values ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class StoredJob:
    """Answer to :meth:`SpoolStore.add_job`."""

    job_id: str
    #: Row ids of the new notifications, in submission order (empty for a duplicate).
    ids: tuple[int, ...]
    #: True when the idempotency key was already used: nothing new was stored.
    duplicate: bool
    #: The ``async`` flag of the stored job (the first one, for a duplicate).
    async_: bool


@dataclass(slots=True)
class NewJob:
    """A job without an idempotency key, for :meth:`SpoolStore.add_jobs`."""

    app: str
    notifications: Sequence[Notification]
    now: float
    send_at: float | None = None
    async_: bool = False
    inflight: bool = False


@dataclass(frozen=True, slots=True)
class SpooledNotification:
    """An unfinished notification read back from the spool."""

    id: int
    job_id: str
    app: str
    notification: Notification
    send_at: float | None
    #: How many times it was in flight when the service stopped without an outcome.
    resumed: int


@dataclass(frozen=True, slots=True)
class Recovery:
    notifications: tuple[SpooledNotification, ...]
    #: Of those, how many were in flight at the crash (possibly delivered already).
    resumed_inflight: int
    resumed_by_app: dict[str, int] = field(default_factory=dict)


class OutcomeRecord(NamedTuple):
    """A final outcome for one spooled notification.

    A named tuple, not a frozen dataclass: one is made per notification sent, and a frozen
    dataclass's ``__init__`` (an ``object.__setattr__`` per field) cost about seven times a
    tuple's, a few percent of the service's CPU per notification. Immutable all the same
    (it is handed to the spool's thread)."""

    id: int
    job_id: str
    app: str
    token: str
    state: str
    status: int | None = None
    reason: str | None = None
    apns_id: str | None = None
    #: Apple's timestamp (UNIX seconds) for a dead token.
    timestamp: float | None = None
    attempts: int = 0
    #: Publish the token in the invalid-token feed (the engine may hold it back).
    token_invalid: bool = False
    #: The client re-sent it after an unknown outcome (``Result.may_duplicate``).
    may_duplicate: bool = False
    #: The kind of evidence the token is invalid (``unregistered``, ``bad_token``…), if any.
    kind: str | None = None

    @classmethod
    def from_result(cls, id: int, job_id: str, app: str, result: Result) -> OutcomeRecord:
        ts = result.timestamp.timestamp() if result.timestamp is not None else None
        return cls(
            id,
            job_id,
            app,
            result.notification.token_hex,
            result.outcome._value_,  # Enum.value is a property: 3% of the CPU here
            result.status,
            result.reason,
            result.apns_id,
            ts,
            result.attempts,
            result.token_invalid,
            result.may_duplicate,
            evidence_kind(result),
        )


@dataclass(frozen=True, slots=True)
class InvalidToken:
    app: str
    token: str
    #: When APNs says the token became invalid (410 timestamp / feedback time), if it said.
    timestamp: float | None
    reason: str | None
    status: int | None
    #: ``"apns"`` (a rejection) or ``"feedback"`` (the binary feedback service).
    source: str
    #: When this service learned it (its own clock); ``since`` filters on this.
    reported_at: float
    #: The kind of evidence: ``unregistered``, ``bad_token``, ``invalid_token``, ``feedback``.
    kind: str | None = None


@dataclass(frozen=True, slots=True)
class NotificationView:
    index: int
    id: int
    token: str
    state: str
    status: int | None
    reason: str | None
    apns_id: str | None
    timestamp: float | None
    attempts: int
    resumed: int
    send_at: float | None
    updated: float


@dataclass(frozen=True, slots=True)
class JobView:
    job_id: str
    app: str
    created: float
    #: ``"pending"`` until every notification has an outcome, then ``"done"``.
    status: str
    async_: bool
    total: int
    finished: float | None
    counts: dict[str, int]
    results: tuple[NotificationView, ...]

    @property
    def done(self) -> bool:
        return self.status == "done"


# --- synchronous store ------------------------------------------------------------------------


def encode_fields(n: Notification) -> str:
    fields: dict[str, object] = {}
    if n.expiry is not None:
        fields["expiry"] = n.expiry
    if n.priority is not None:
        fields["priority"] = n.priority
    if n.topic is not None:
        fields["topic"] = n.topic
    if n.push_type is not None:
        fields["push_type"] = n.push_type.value
    if n.collapse_id is not None:
        fields["collapse_id"] = n.collapse_id
    return json.dumps(fields, separators=(",", ":"))


def decode_notification(
    token: str, payload: bytes, fields_json: str, apns_id: str | None
) -> Notification:
    """Rebuild a stored notification (it was validated when it was accepted)."""
    f: dict[str, Any] = json.loads(fields_json)
    pt = f.get("push_type")
    return Notification(
        token=bytes.fromhex(token),
        payload=bytes(payload),
        expiry=f.get("expiry"),
        priority=f.get("priority"),
        topic=f.get("topic"),
        push_type=PushType(pt) if pt is not None else None,
        collapse_id=f.get("collapse_id"),
        apns_id=apns_id,
    )


def _storage_failed(e: BaseException) -> bool:
    """An error of the storage itself (full, I/O, corrupt), not of an operation's input."""
    return isinstance(e, sqlite3.OperationalError) or type(e) is sqlite3.DatabaseError


#: Rows changed between two checkpoints (sync() runs them; SQLite's own, every 1,000 WAL
#: pages by default, would run on the committing thread, the reactor's).
_CHECKPOINT_CHANGES = 2000

#: A job's view of more notifications than this is read on the spool's thread (Spool.job).
VIEW_ROWS_HERE = 1_000

#: Seconds an fsync of the WAL may take on the reactor thread (Spool.inline_sync_limit): an
#: SSD's take a fraction of a millisecond, but the time measured there also holds the wait to
#: be scheduled again on a busy machine (on a loaded 2-core VM, over 1 ms now and then). After
#: a slower one, the fsyncs run on the spool's thread for INLINE_SYNC_RETRY seconds, then one
#: is tried on the reactor's again; after a stall (INLINE_SYNC_STALL or more), for
#: INLINE_SYNC_BACKOFF seconds. So a slow disk holds the reactor up for one fsync a second at
#: most, and a stalling one once in 10 s.
INLINE_SYNC_LIMIT = 0.005
INLINE_SYNC_RETRY = 1.0
INLINE_SYNC_STALL = 0.05
INLINE_SYNC_BACKOFF = 10.0

#: ``fdatasync`` where the platform has one (not macOS), else ``fsync``.
_fdatasync = getattr(os, "fdatasync", os.fsync)


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _unavailable(e: BaseException) -> Exception:
    """The backend-neutral "cannot store now" error (the API's 503) for a storage error."""
    error = SpoolUnavailableError(f"the spool cannot write: {e}")
    error.__cause__ = e
    return error


class _Failed:
    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


def new_job_id(now: float) -> str:
    """A job id: 32 hex digits, the first 12 ``now`` in milliseconds, then 80 random bits.

    Why not ``uuid4().hex``: ids made in creation order land next to each other in the
    ``jobs`` key (and, before schema 3, the notifications' ``job_id`` index), so a batch of
    jobs and their outcomes dirties a few B-tree pages instead of one or two random ones per
    job: half the WAL pages per batch of one-notification jobs (31 → 15 in a spool of 60,000
    jobs), about 9 % less of the store's CPU per request. The format (32 lowercase hex
    digits) is unchanged."""
    return f"{int(now * 1000) & 0xFFFFFFFFFFFF:012x}{os.urandom(10).hex()}"


class SpoolStore:
    """Synchronous SQLite storage. Use from one thread at a time (:class:`Spool` never lets
    two batches overlap)."""

    def __init__(
        self,
        path: str | Path,
        *,
        synchronous: str = "FULL",
        timer: Callable[[], float] = time.perf_counter,
    ) -> None:
        if synchronous not in ("NORMAL", "FULL", "EXTRA"):
            raise ValueError(f"synchronous must be NORMAL, FULL or EXTRA, not {synchronous!r}")
        self.path = Path(path)
        try:
            # Device tokens are personal data: the spool is its owner's alone (0600). SQLite
            # gives its -wal and -shm files the database file's permissions.
            os.close(os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600))
        except OSError as e:
            raise SpoolError(f"cannot open spool {str(self.path)!r}: {e.strerror}") from None
        try:
            self._db = sqlite3.connect(
                str(self.path),
                isolation_level=None,
                check_same_thread=False,
                timeout=0,
                cached_statements=_STATEMENT_CACHE,
            )
        except sqlite3.Error as e:
            raise SpoolError(f"cannot open spool {str(self.path)!r}: {e}") from None
        self._depth = 0
        #: The WAL file, open for sync() (never closed before the connection: closing any
        #: descriptor of a file drops the process's POSIX locks on it).
        self._wal_fd = -1
        #: Inside commit_batch (and until the spool is open): the transaction's fsync is
        #: left to a call of sync().
        self._sync_later = True
        self._changes_at_checkpoint = 0
        #: Measures each fsync of the WAL (a monotonic clock in seconds; tests give their own).
        self._timer = timer
        #: How long the last fsync of the WAL took (0 before the first, and without one).
        self.last_sync_seconds = 0.0
        #: Why the last checkpoint failed (tried again at each sync), or None.
        self.checkpoint_error: str | None = None
        #: Why this store refuses all work (its WAL could not be synced), or None.
        self.broken: str | None = None
        try:
            self._db.execute("PRAGMA locking_mode = EXCLUSIVE")
            # Statement journals keep SQLite's default (temp_store): past 64 KiB one moves to
            # a temporary file, which the exclusive lock keeps open, and later commits write
            # their savepoints' pages there too (about 7 more pwrite calls for a
            # one-notification batch, measured with strace; no time measurable). In memory
            # instead, a journal grows with its statement: a purge of 100,000 rows held
            # 16 MiB more, and a first purge after a long stop could hold far more.
            mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise SpoolError(f"spool {str(self.path)!r}: WAL journal unavailable ({mode})")
            # The WAL's fsync is ours (see sync_wal()): commits run where they are asked
            # for, the fsync where Spool chooses, the checkpoints on the spool's thread.
            self._db.execute("PRAGMA synchronous = NORMAL")
            self._db.execute("PRAGMA wal_autocheckpoint = 0")
            with self.transaction():
                for statement in _SCHEMA.split(";"):
                    if statement.strip():
                        self._db.execute(statement)
                columns = {r[1] for r in self._db.execute("PRAGMA table_info(jobs)")}
                if "fingerprint" not in columns:  # a spool made before fingerprints
                    self._db.execute("ALTER TABLE jobs ADD COLUMN fingerprint TEXT")
                row = self._db.execute("SELECT value FROM meta WHERE key = 'schema'").fetchone()
                if row is None:
                    self._db.execute(
                        "INSERT INTO meta (key, value) VALUES ('schema', ?)", (SCHEMA_VERSION,)
                    )
                elif row[0] != SCHEMA_VERSION:
                    self._migrate(str(row[0]))
            top = self._db.execute("SELECT max(id) FROM notifications").fetchone()[0]
        except sqlite3.DatabaseError as e:  # OperationalError, or a corrupt/truncated file
            self._db.close()
            if "locked" in str(e):
                raise SpoolError(
                    f"spool {str(self.path)!r} is in use by another process (or another "
                    "spool object in this one)"
                ) from None
            raise SpoolError(f"cannot open spool {str(self.path)!r}: {e}") from None
        except BaseException:
            self._db.close()
            raise
        self._next_id = (top or 0) + 1
        #: Bound parameters one statement may have (999 in SQLite before 3.32, 32,766 since).
        self._max_params = self._db.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
        self._synchronous = synchronous
        self._sync_later = False
        self.closed = False
        if synchronous != "NORMAL":
            # SQLite's own name for the file (symbolic links resolved), and its WAL's.
            main = Path(self._db.execute("PRAGMA database_list").fetchone()[2])
            try:
                self._wal_fd = os.open(f"{main}-wal", os.O_RDONLY | os.O_CLOEXEC)
                # SQLite syncs a new WAL's directory at its first fsync, so do we.
                _fsync_path(main.parent)
            except OSError as e:
                self._db.close()
                if self._wal_fd >= 0:
                    os.close(self._wal_fd)
                raise SpoolError(f"cannot open spool {str(self.path)!r}: {e}") from None

    def _migrate(self, version: str) -> None:
        """Bring an older spool's schema up to :data:`SCHEMA_VERSION` (in the caller's
        transaction), or refuse a schema this version does not know."""
        while version in _MIGRATIONS:
            if version == "2":
                self._check_consecutive_ids()
            statements, version = _MIGRATIONS[version]
            for statement in statements:
                self._db.execute(statement)
            self._db.execute("UPDATE meta SET value = ? WHERE key = 'schema'", (version,))
        if version != SCHEMA_VERSION:
            raise SpoolError(
                f"spool {str(self.path)!r} has schema {version}; this txapns needs {SCHEMA_VERSION}"
            )

    def _check_consecutive_ids(self) -> None:
        """Before schema 3: refuse a spool where a job's notifications are not exactly
        ``total`` rows of consecutive ids (never written so: a job's rows are stored in one
        transaction, their ids counted on from the last, and purged with it). Its range of
        ids would take in another job's rows, to be shown and purged with it."""
        broken = self._db.execute(
            "SELECT j.id FROM jobs j LEFT JOIN notifications n ON n.job_id = j.id"
            " GROUP BY j.id HAVING count(n.id) != j.total"
            " OR (count(n.id) > 0 AND max(n.id) - min(n.id) + 1 != count(n.id)) LIMIT 1"
        ).fetchone()
        if broken is not None:
            raise SpoolError(
                f"spool {str(self.path)!r}: job {broken[0]}'s notifications are not its "
                "total of consecutive ids; it cannot be brought to schema 3"
            )

    # -- transactions --

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """One transaction; nested uses join the outer one."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        if self.broken is not None:
            raise SpoolUnavailableError(self.broken)
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
            self._depth = 0
            self._db.execute("COMMIT")
            if not self._sync_later:
                self.sync()
        except BaseException:
            self._depth = 0
            # A failed COMMIT (disk full) leaves the transaction open, and SQLite may have
            # rolled it back itself: either way the next transaction must be able to begin.
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def run_batch(
        self, ops: Sequence[Callable[[SpoolStore], object]], *, volatile: bool = False
    ) -> list[object]:
        """:meth:`commit_batch`, then :meth:`sync` unless ``volatile``.

        ``volatile``: nothing in ``ops`` was promised to anyone yet (a synchronous request's
        job, answered only once its outcomes are, and reads): committed without an
        ``fsync``. It still survives a killed process; only a power loss before the next
        durable commit can take it, and the WAL's next ``fsync`` (the outcomes' commit,
        before the answer) makes it durable with everything before it.
        """
        out = self.commit_batch(ops)
        if not volatile:
            self.sync()
        return out

    def commit_batch(self, ops: Sequence[Callable[[SpoolStore], object]]) -> list[object]:
        """Run ``ops`` in one transaction, each in a savepoint, and commit it without an
        ``fsync``: call :meth:`sync` before promising anything it wrote. Failures are
        returned, not raised; the transaction itself failing (disk full) raises."""
        out: list[object] = []
        self._sync_later = True
        try:
            with self.transaction():
                for op in ops:
                    self._db.execute("SAVEPOINT op")
                    try:
                        value = op(self)
                    except Exception as e:
                        self._db.execute("ROLLBACK TO op")
                        self._db.execute("RELEASE op")
                        out.append(_Failed(_unavailable(e) if _storage_failed(e) else e))
                    else:
                        self._db.execute("RELEASE op")
                        out.append(value)
        except sqlite3.Error as e:
            raise _unavailable(e) from e
        finally:
            self._sync_later = False
        return out

    def sync(self) -> None:
        """Make every commit so far durable (:meth:`sync_wal`); now and then, checkpoint the
        WAL (:attr:`checkpoint_due`)."""
        self.sync_wal()
        if self.checkpoint_due:
            self._checkpoint()

    def sync_wal(self) -> None:
        """Make every commit so far durable: one ``fdatasync`` of the WAL file, timed in
        :attr:`last_sync_seconds`.

        The connection commits with ``synchronous=NORMAL``, and this is the ``fsync`` that
        SQLite's ``FULL`` would add to each commit in WAL mode, after the commit's frames are
        written. Done apart from the commit, one ``fsync`` serves every commit since the last
        one, and it runs where the caller chooses (:class:`Spool`: on the spool's thread, or
        on the reactor's while the disk's fsyncs are quick: ``Spool.inline_sync_limit``).
        ``synchronous="NORMAL"`` skips the ``fsync``.
        """
        if self.syncs_wal:
            start = self._timer()
            try:
                _fdatasync(self._wal_fd)
            except OSError as e:
                # Unlike a failed COMMIT under FULL, the transactions are committed: they
                # may or may not be on disk, and after a failed fsync Linux may count their
                # pages as written, so a later fsync "succeeding" proves nothing for them
                # (nor for commits after them in the WAL). Nothing more is written or
                # acknowledged on top of that; a restart recovers what the disk holds.
                self.broken = (
                    f"the spool's WAL could not be synced ({e.strerror or e}): it takes no "
                    "more work until the service is restarted"
                )
                raise SpoolUnavailableError(self.broken) from e
            self.last_sync_seconds = self._timer() - start

    @property
    def syncs_wal(self) -> bool:
        """:meth:`sync_wal` syncs (``synchronous`` is not ``NORMAL``)."""
        return self._wal_fd >= 0

    @property
    def checkpoint_due(self) -> bool:
        """Enough rows changed since the last checkpoint for :meth:`sync` to run one."""
        # total_changes is a C int: it wraps, hence the mask.
        changed = (self._db.total_changes - self._changes_at_checkpoint) & 0xFFFFFFFF
        return changed >= _CHECKPOINT_CHANGES

    def _checkpoint(self) -> None:
        """Copy the WAL into the database file (SQLite syncs the WAL before and the file
        after). What was committed is durable already: a failure here fails nothing; it is
        noted in :attr:`checkpoint_error` (the Spool logs it) and tried again at the next
        sync, and the WAL grows meanwhile."""
        try:
            self._db.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except sqlite3.Error as e:
            self.checkpoint_error = str(e)
            return
        self.checkpoint_error = None
        self._changes_at_checkpoint = self._db.total_changes

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._db.close()  # checkpoints and removes the WAL
            if self._wal_fd >= 0:
                os.close(self._wal_fd)
                self._wal_fd = -1

    # -- writes --

    def add_job(
        self,
        app: str,
        notifications: Sequence[Notification],
        *,
        now: float,
        send_at: float | None = None,
        async_: bool = False,
        idempotency_key: str | None = None,
        inflight: bool = False,
        fingerprint: str | None = None,
    ) -> StoredJob:
        """Store a job and its notifications as ``queued`` (``inflight`` if the caller hands
        them to a client as soon as this commits: one transaction instead of two); honour the
        idempotency key.

        ``fingerprint`` identifies the request (e.g. a hash of its body): a repeat of the key
        with another fingerprint raises :class:`IdempotencyKeyReusedError` instead of
        answering with the first job."""
        with self.transaction():
            if idempotency_key is not None:
                row = self._db.execute(
                    "SELECT id, async, fingerprint FROM jobs WHERE app = ? AND idempotency_key = ?",
                    (app, idempotency_key),
                ).fetchone()
                if row is not None:
                    if fingerprint is not None and row[2] is not None and row[2] != fingerprint:
                        raise IdempotencyKeyReusedError(row[0])
                    return StoredJob(row[0], (), True, bool(row[1]))
            jobs: list[tuple[object, ...]] = []
            rows: list[tuple[object, ...]] = []
            stored = self._rows(
                NewJob(app, notifications, now, send_at, async_, inflight),
                jobs,
                rows,
                {},
                idempotency_key,
                fingerprint,
            )
            self._insert(jobs, rows)
            return stored

    def add_jobs(self, jobs: Sequence[NewJob]) -> list[StoredJob]:
        """Store jobs without idempotency keys, in two statements for all of them (with one
        notification per request, one ``add_job`` each was most of the spool thread's work).
        One transaction: they are stored together or not at all."""
        job_rows: list[tuple[object, ...]] = []
        rows: list[tuple[object, ...]] = []
        fields_cache: dict[tuple[object, ...], str] = {}
        with self.transaction():
            out = [self._rows(j, job_rows, rows, fields_cache) for j in jobs]
            self._insert(job_rows, rows)
        return out

    def _insert(self, jobs: list[tuple[object, ...]], rows: list[tuple[object, ...]]) -> None:
        self._rows_at_once(
            "INSERT INTO jobs (id, app, created, idempotency_key, fingerprint, async, total,"
            " remaining, status, first_id) VALUES ",
            jobs,
        )
        self._rows_at_once(
            "INSERT INTO notifications (id, job_id, idx, app, token, payload, fields,"
            " send_at, state, apns_id, updated) VALUES ",
            rows,
        )

    def _rows_at_once(
        self,
        head: str,
        rows: Sequence[Sequence[object]],
        tail: str = "",
        first: Sequence[object] = (),
    ) -> list[Any]:
        """``head`` + one ``(?, …)`` group per row + ``tail``, run for ``rows`` in a few
        statements (``first``: parameters that come before the rows' in each), instead of
        ``executemany``; the rows the statements return (a ``SELECT``'s), in order.

        Why: the sqlite3 module lets go of the GIL around every step, and ``executemany``
        steps once per row. While the reactor thread is busy, each of those is a GIL
        hand-off between the two threads, and the spool thread waits for the GIL once per
        row (``benchmarks/spool_statements.py`` measures both ways beside a busy thread).

        Statements hold as many rows as SQLite's parameter limit allows (at most
        ``_ROWS_PER_STATEMENT``). What is left takes one statement of exactly its rows if
        they are few (``_EXACT_ROWS``), else statements of 256, 128 … rows: each kind of
        statement has a few dozen shapes, and they all stay in the connection's statement
        cache. With a statement for every row count, the batches' varying sizes (the
        requests of one reactor turn, the answers of another) pushed statements out of
        the cache, and preparing them again cost about a quarter more of the store's CPU
        per notification at up to 64 rows a batch (``benchmarks/spool_statements.py
        --shapes``).
        """
        out: list[Any] = []
        if not rows:
            return out
        width = len(rows[0])
        group = "(" + ", ".join("?" * width) + ")"
        per = max(1, min(_ROWS_PER_STATEMENT, (self._max_params - len(first)) // width))
        start, total = 0, len(rows)
        while start < total:
            left = total - start
            if left >= per:
                count = per
            elif left <= _EXACT_ROWS:
                count = left
            else:
                count = 1 << (left.bit_length() - 1)
            params = list(first)
            for row in rows[start : start + count]:
                params.extend(row)
            out.extend(self._db.execute(head + ", ".join([group] * count) + tail, params))
            start += count
        return out

    def _rows(
        self,
        job: NewJob,
        jobs: list[tuple[object, ...]],
        rows: list[tuple[object, ...]],
        fields_cache: dict[tuple[object, ...], str],
        idempotency_key: str | None = None,
        fingerprint: str | None = None,
    ) -> StoredJob:
        """A new job's row and its notifications' rows, appended to ``jobs`` and ``rows``
        (ids taken now: call inside the transaction that inserts them). ``fields_cache``:
        the encoded fields by their values, shared by the jobs of one call."""
        app, notifications, now, send_at = job.app, job.notifications, job.now, job.send_at
        job_id = new_job_id(now)
        count = len(notifications)
        first = self._next_id
        jobs.append(
            (
                job_id,
                app,
                now,
                idempotency_key,
                fingerprint if idempotency_key is not None else None,
                int(job.async_),
                count,
                count,
                "pending" if count else "done",
                first,
            )
        )
        state = INFLIGHT if job.inflight else QUEUED

        def fields_of(n: Notification) -> str:
            k = (n.expiry, n.priority, n.topic, n.push_type, n.collapse_id)
            f = fields_cache.get(k)
            if f is None:
                f = fields_cache[k] = encode_fields(n)
            return f

        rows.extend(
            (
                first + i,
                job_id,
                i,
                app,
                n.token_hex,
                n.payload,
                fields_of(n),
                send_at,
                state,
                n.apns_id,
                now,
            )
            for i, n in enumerate(notifications)
        )
        self._next_id = first + count
        return StoredJob(job_id, tuple(range(first, first + count)), False, job.async_)

    def mark_inflight(self, ids: Iterable[int], *, now: float) -> None:
        with self.transaction():
            self._set_state(ids, QUEUED, INFLIGHT, now)

    def requeue(self, ids: Iterable[int], *, now: float) -> None:
        """Put in-flight rows back to ``queued`` (they were not sent after all)."""
        with self.transaction():
            self._set_state(ids, INFLIGHT, QUEUED, now)

    def _set_state(self, ids: Iterable[int], was: str, state: str, now: float) -> None:
        """Rows of ``ids`` that are in state ``was`` go to ``state``."""
        self._rows_at_once(
            f"UPDATE notifications SET state = '{state}', updated = ?"
            f" WHERE state = '{was}' AND id IN (",
            [(i,) for i in ids],
            ")",
            (now,),
        )

    def record_outcomes(self, records: Iterable[OutcomeRecord], *, now: float) -> list[str]:
        """Record final outcomes; return the ids of jobs this finished.

        A row that already has an outcome keeps it (recording is idempotent); of several
        records for one row in the same call, the first wins.
        """
        wanted: dict[int, OutcomeRecord] = {}
        for r in records:
            if r.state not in FINISHED_STATES:
                raise ValueError(f"not a final state: {r.state!r}")
            wanted.setdefault(r.id, r)
        finished: list[str] = []
        with self.transaction():
            # The open rows, with the apns-id each holds: an outcome that brings the same one
            # (APNs echoes ours) or none leaves it as it is.
            stored = self._rows_at_once(
                "SELECT id, apns_id FROM notifications WHERE id IN (",
                [(i,) for i in wanted],
                ") AND state IN ('queued', 'inflight')",
            )
            todo: list[OutcomeRecord] = []
            alike: dict[tuple[object, ...], list[tuple[int, object]]] = {}
            own_id: list[tuple[object, ...]] = []
            # In id order, as one statement returned them (jobs finish, and a token's last
            # evidence wins, in that order), whatever statements the ids took.
            for ident, apns_id in sorted(stored):
                r = wanted[ident]
                todo.append(r)
                values = (
                    r.state,
                    r.status,
                    r.reason,
                    r.timestamp,
                    r.attempts,
                    int(r.may_duplicate),
                )
                if r.apns_id is None or r.apns_id == apns_id:
                    alike.setdefault(values, []).append((ident, apns_id))
                else:
                    own_id.append((ident, r.apns_id, *values, now))
            self._update_outcomes(alike, own_id, now)
            per_job: dict[str, int] = {}
            for r in todo:
                per_job[r.job_id] = per_job.get(r.job_id, 0) + 1
            dead = [
                (r.app, r.token, r.timestamp, r.reason, r.status, "apns", now, r.kind)
                for r in todo
                if r.token_invalid
            ]
            if dead:
                self._upsert_invalid(dead)
            # Three statements for any number of jobs (one notification per request makes a
            # job per outcome: two statements per job were most of this transaction).
            self._update_rows(
                list(per_job.items()),
                "WITH d (id, n) AS (VALUES ",
                ") UPDATE jobs SET remaining = jobs.remaining - d.n FROM d WHERE jobs.id = d.id",
                "UPDATE jobs SET remaining = remaining - ?2 WHERE id = ?1",
            )
            jobs = list(per_job)
            finished = self._ids_where("jobs", jobs, "remaining <= 0 AND status != 'done'")
            if finished:
                order = {job_id: k for k, job_id in enumerate(jobs)}
                finished.sort(key=order.__getitem__)  # in a stable order, as before
                self._rows_at_once(
                    "UPDATE jobs SET status = 'done', finished = ? WHERE id IN (",
                    [(job_id,) for job_id in finished],
                    ")",
                    (now,),
                )
        return finished

    def _update_outcomes(
        self,
        alike: Mapping[tuple[object, ...], Sequence[tuple[int, object]]],
        own_id: Sequence[tuple[object, ...]],
        now: float,
    ) -> None:
        """Write outcomes: ``alike`` maps ``(state, status, reason, timestamp, attempts,
        may_duplicate)`` to the rows ``(id, stored apns-id)`` that get just those values, a
        statement for each group of several; ``own_id`` has rows ``(id, apns_id, …those
        values, now)``, each with its own apns-id, a step each: those whose outcome brings
        an apns-id other than the one stored (seldom: APNs echoes ours), and the groups of
        one (dead tokens: each has its own timestamp), with the stored apns-id.

        Why grouped: one notification's outcome is nearly always one of a few alike (accepted
        on the first try), and ``UPDATE … WHERE id IN (…)`` costs SQLite about half of an
        ``UPDATE … FROM (VALUES …)`` per row, which stores the joined rows in a temporary
        table before it updates them (``benchmarks/spool_statements.py --outcomes``)."""
        steps = list(own_id)
        for values, rows in alike.items():
            if len(rows) == 1:
                steps.append((*rows[0], *values, now))
                continue
            self._rows_at_once(
                "UPDATE notifications SET state = ?, status = ?, reason = ?, timestamp = ?,"
                " attempts = attempts + ?, resumed = resumed + ?, updated = ? WHERE id IN (",
                [(ident,) for ident, _ in rows],
                ")",
                (*values, now),
            )
        self._db.executemany(
            "UPDATE notifications SET apns_id = ?2, state = ?3, status = ?4, reason = ?5,"
            " timestamp = ?6, attempts = attempts + ?7, resumed = resumed + ?8, updated = ?9"
            " WHERE id = ?1",
            steps,
        )

    def _update_rows(
        self, rows: Sequence[Sequence[object]], head: str, tail: str, one_row: str
    ) -> None:
        """Update from ``rows``: ``head`` (``WITH x (…) AS (VALUES``) + the rows + ``tail``
        (``) UPDATE … FROM x …``), many rows per statement; or ``one_row`` (numbered
        parameters, ``?1`` the first of a row) stepped once per row, for a single row (the
        cheaper statement then) or an SQLite without ``UPDATE … FROM``."""
        if _UPDATE_FROM and len(rows) > 1:
            self._rows_at_once(head, rows, tail)
        else:
            self._db.executemany(one_row, rows)

    def _ids_where(self, table: str, ids: list[Any], condition: str) -> list[Any]:
        """Those of ``ids`` whose row in ``table`` meets ``condition``."""
        found = self._rows_at_once(
            f"SELECT id FROM {table} WHERE id IN (", [(i,) for i in ids], f") AND {condition}"
        )
        return [row[0] for row in found]

    def add_invalid_tokens(
        self,
        app: str,
        entries: Iterable[tuple[str, float | None]],
        *,
        now: float,
        source: str = "feedback",
        reason: str | None = None,
        status: int | None = None,
        kind: str | None = "feedback",
    ) -> None:
        """Record dead tokens learnt outside a send, e.g. feedback ``(token, time)`` tuples."""
        with self.transaction():
            self._upsert_invalid(
                [
                    (app, token.lower(), ts, reason, status, source, now, kind)
                    for token, ts in entries
                ]
            )

    def _upsert_invalid(self, rows: Sequence[tuple[object, ...]]) -> None:
        # A token twice in one statement: its later row updates the earlier, as before.
        self._rows_at_once(
            "INSERT INTO invalid_tokens (app, token, timestamp, reason, status, source,"
            " reported_at, kind) VALUES ",
            rows,
            " ON CONFLICT (app, token)"
            " DO UPDATE SET timestamp = excluded.timestamp, reason = excluded.reason,"
            " status = excluded.status, source = excluded.source,"
            " reported_at = excluded.reported_at, kind = excluded.kind",
        )

    def recover(self, *, now: float) -> Recovery:
        """Everything unfinished, oldest first; in-flight rows become ``queued``, counted."""
        with self.transaction():
            rows = self._db.execute(
                "SELECT id, job_id, app, token, payload, fields, apns_id, send_at, state, resumed"
                " FROM notifications WHERE state IN ('queued', 'inflight') ORDER BY id"
            ).fetchall()
            self._db.execute(
                "UPDATE notifications SET state = 'queued', resumed = resumed + 1, updated = ?"
                " WHERE state = 'inflight'",
                (now,),
            )
            self._db.execute(
                "UPDATE jobs SET status = 'done', finished = ?"
                " WHERE status != 'done' AND remaining <= 0",
                (now,),
            )
        items: list[SpooledNotification] = []
        by_app: dict[str, int] = {}
        for id_, job_id, app, token, payload, fields_json, apns_id, send_at, state, resumed in rows:
            if state == INFLIGHT:
                resumed += 1
                by_app[app] = by_app.get(app, 0) + 1
            items.append(
                SpooledNotification(
                    id=id_,
                    job_id=job_id,
                    app=app,
                    notification=decode_notification(token, payload, fields_json, apns_id),
                    send_at=send_at,
                    resumed=resumed,
                )
            )
        return Recovery(tuple(items), sum(by_app.values()), by_app)

    def purge(self, *, before: float) -> int:
        """Delete finished jobs (and their rows) finished before ``before``, and old dead tokens.

        Returns how many notification rows were deleted. Idempotency keys of purged jobs are
        forgotten with them.
        """
        with self.transaction():
            cur = self._db.execute(
                "DELETE FROM notifications WHERE id IN (SELECT n.id FROM jobs j"
                " JOIN notifications n ON n.id BETWEEN j.first_id AND j.first_id + j.total - 1"
                " WHERE j.status = 'done' AND j.finished < ?)",
                (before,),
            )
            deleted = cur.rowcount
            self._db.execute("DELETE FROM jobs WHERE status = 'done' AND finished < ?", (before,))
            self._db.execute("DELETE FROM invalid_tokens WHERE reported_at < ?", (before,))
        return deleted

    # -- reads --

    def job(self, job_id: str) -> JobView | None:
        """The job's view (None: no such job)."""
        view = self.small_job(job_id, max_rows=None)
        assert not isinstance(view, int)
        return view

    def small_job(self, job_id: str, *, max_rows: int | None) -> JobView | int | None:
        """:meth:`job`, or only the job's number of notifications if it has more than
        ``max_rows`` (to read the view where that keeps no one waiting)."""
        row = self._db.execute(
            "SELECT id, app, created, status, async, total, finished, first_id FROM jobs"
            " WHERE id = ?",
            (job_id,),
        ).fetchone()
        if row is None:
            return None
        if max_rows is not None and row[5] > max_rows:
            return int(row[5])
        rows = self._db.execute(
            "SELECT idx, id, token, state, status, reason, apns_id, timestamp, attempts,"
            " resumed, send_at, updated FROM notifications WHERE id BETWEEN ? AND ?"
            " ORDER BY id",
            (row[7], row[7] + row[5] - 1),
        ).fetchall()
        results = tuple(NotificationView(*r) for r in rows)
        counts = dict.fromkeys(STATES, 0)
        for r in results:
            counts[r.state] += 1
        return JobView(
            job_id=row[0],
            app=row[1],
            created=row[2],
            status=row[3],
            async_=bool(row[4]),
            total=row[5],
            finished=row[6],
            counts=counts,
            results=results,
        )

    def find_job(self, app: str, idempotency_key: str) -> str | None:
        row = self._db.execute(
            "SELECT id FROM jobs WHERE app = ? AND idempotency_key = ?", (app, idempotency_key)
        ).fetchone()
        return None if row is None else str(row[0])

    def invalid_tokens(
        self, app: str, *, since: float | None = None, limit: int = 10_000
    ) -> list[InvalidToken]:
        """Dead tokens of ``app`` reported after ``since`` (exclusive; this service's clock),
        oldest first, ``limit`` of them, or more when the last one's ``reported_at`` is shared
        by others (an outcome batch shares its time): those are all included, so that
        polling on from the last ``reported_at`` seen neither repeats a token nor skips one."""
        columns = "app, token, timestamp, reason, status, source, reported_at, kind"
        rows = self._db.execute(
            f"SELECT {columns} FROM invalid_tokens WHERE app = ? AND reported_at > ?"
            " ORDER BY reported_at, token LIMIT ?",
            (app, since if since is not None else float("-inf"), limit),
        ).fetchall()
        if len(rows) == limit:
            # Complete the last reported_at: the next call starts after it.
            last_at, last_token = rows[-1][6], rows[-1][1]
            rows += self._db.execute(
                f"SELECT {columns} FROM invalid_tokens WHERE app = ? AND reported_at = ?"
                " AND token > ? ORDER BY token",
                (app, last_at, last_token),
            ).fetchall()
        return [InvalidToken(*r) for r in rows]

    def counts(self) -> dict[tuple[str, str], int]:
        """``(app, state) → count`` over the whole spool (for diagnostics)."""
        rows = self._db.execute(
            "SELECT app, state, count(*) FROM notifications GROUP BY app, state"
        ).fetchall()
        return {(app, state): n for app, state, n in rows}


# --- asynchronous layer -----------------------------------------------------------------------


class Runner(Protocol):
    """Runs a blocking function somewhere and returns a Deferred of its value."""

    def __call__(self, fn: Callable[[], _T], /) -> Deferred[_T]: ...


def inline_runner(fn: Callable[[], _T]) -> Deferred[_T]:
    """Run on the calling thread (tests, tools): the Deferred has already fired."""
    try:
        return succeed(fn())
    except Exception:
        return fail(Failure())


def thread_runner(reactor: IReactorFromThreads, pool: ThreadPool) -> Runner:
    """Run in ``pool`` (give it ``maxthreads=1``: the store wants one thread at a time)."""

    def run(fn: Callable[[], _T], /) -> Deferred[_T]:
        return deferToThreadPool(reactor, pool, fn)

    return run


#: An operation, its Deferred, and whether it is volatile (see :meth:`SpoolStore.run_batch`).
_Op = tuple[Callable[[SpoolStore], object], "Deferred[Any]", bool]


class _JobGroup:
    """The jobs without a key of one batch: one operation (:meth:`SpoolStore.add_jobs`)."""

    __slots__ = ("jobs", "volatile", "waiting")

    def __init__(self) -> None:
        self.jobs: list[NewJob] = []
        self.waiting: list[Deferred[StoredJob]] = []
        #: Every job in it is volatile (see Spool.add_job).
        self.volatile = True

    def stored(self, jobs: list[StoredJob]) -> None:
        for d, job in zip(self.waiting, jobs, strict=True):
            d.callback(job)

    def failed(self, failure: Failure) -> None:
        for d in self.waiting:
            d.errback(failure)


class Spool:
    """Asynchronous, batched access to a :class:`SpoolStore`.

    Every call made during one reactor turn joins one batch (one transaction); the returned
    Deferreds fire once that transaction committed and, unless nothing in it needs to be
    durable, the WAL was synced (or errback if either failed). Batches never overlap: calls
    made while one is being written or synced form the next.
    """

    def __init__(self, store: SpoolStore, clock: IReactorTime, runner: Runner) -> None:
        self.store = store
        self._clock = clock
        self._runner = runner
        self._queue: list[_Op] = []
        #: This batch's jobs without a key, stored together (its place in _queue is that of
        #: the first of them).
        self._group: _JobGroup | None = None
        #: The batch's write, at the end of the turn.
        self._flush_timer = Timer(clock, self._flush)
        self._busy = False
        #: This batch has a long operation (see _call).
        self._long = False
        #: The store's checkpoint_error and broken as last logged.
        self._logged: tuple[str | None, str | None] = (None, None)
        self._closing = False
        #: Why outcomes cannot be written now (the storage failed), or None.
        self.unavailable_reason: str | None = None
        self._outcome_failures = 0
        #: Outcome writes waiting to be tried again: call → (records, now, their Deferred).
        self._outcome_retries: dict[IDelayedCall, tuple[list[OutcomeRecord], float, Any]] = {}
        #: Cap of the delay between tries of an outcome write.
        self.max_retry_delay = 30.0
        #: A batch's fsync runs on the reactor thread, not the runner's, while the fsyncs
        #: there take at most this long (seconds) and no checkpoint is due; 0 turns that
        #: off. After a slower one they run on the runner for inline_sync_retry seconds,
        #: after a stall (inline_sync_stall or more) for inline_sync_backoff (_judge_sync).
        self.inline_sync_limit = INLINE_SYNC_LIMIT
        self.inline_sync_retry = INLINE_SYNC_RETRY
        self.inline_sync_stall = INLINE_SYNC_STALL
        self.inline_sync_backoff = INLINE_SYNC_BACKOFF
        #: The fsyncs run on the reactor thread again from this time (the clock's).
        self._inline_not_before = 0.0
        #: Batches written and operations in them (for metrics and tests).
        self.batches = 0
        self.operations = 0

    def _call(
        self,
        fn: Callable[[SpoolStore], _T],
        *,
        volatile: bool = False,
        long: bool = False,
        closing: bool = False,
    ) -> Deferred[_T]:
        """Queue ``fn`` for this turn's batch. ``long``: it may take long (a whole table's
        rows), so its batch runs on the runner (the spool's thread), not the reactor.
        ``closing``: taken while the spool closes (the rest of a call made before
        :meth:`close`, queued by its first batch; the store closes after it)."""
        if self._closing and not closing:
            return fail(SpoolClosedError("the spool is closed"))
        d: Deferred[_T] = Deferred()
        self._queue.append((fn, d, volatile))
        self._long = self._long or long
        self._schedule()
        return d

    def _schedule(self) -> None:
        if self._busy or self._flush_timer.armed or not self._queue:
            return
        self._flush_timer.start(0)

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        group, self._group = self._group, None
        self._busy = True
        self.batches += 1
        # The jobs of a group count one each, as when each was an operation of its own.
        self.operations += len(batch) + (len(group.jobs) - 1 if group is not None else 0)
        ops = [fn for fn, _, _ in batch]
        # One durable operation makes the whole batch durable (one fsync, as ever).
        volatile = all(v for _, _, v in batch) and (group is None or group.volatile)
        long, self._long = self._long, False
        d: Deferred[list[object]]
        if long:
            d = self._runner(lambda: self.store.run_batch(ops, volatile=volatile))
        else:
            # A batch's statements take microseconds a row: they run here, on the reactor.
            # So does the fsync while the fsyncs take at most inline_sync_limit (5 ms): the
            # batch's answers wait for it anyway, and handing it to the spool's thread and
            # back cost the process more CPU than the fsync itself (benchmarks/
            # service_throughput.py --h1load). For a second after a slower one here (10 s
            # after a stall: _judge_sync), and whenever a checkpoint is due (milliseconds),
            # the fsync goes to the runner, with the checkpoint, in one call. A disk that
            # stalls still holds the reactor up for the one fsync that meets the stall.
            synced = False
            try:
                values = self.store.commit_batch(ops)
                if (
                    not volatile
                    and not self.store.checkpoint_due
                    and (not self.store.syncs_wal or self._inline_now())
                ):
                    self.store.sync_wal()
                    synced = True
                    self._judge_sync()
            except Exception:
                d = fail(Failure())
            else:
                d = succeed(values)
                if not volatile and not synced:
                    d = self._runner(self.store.sync).addCallback(lambda _: values)
        d.addCallbacks(
            self._written, self._batch_failed, callbackArgs=(batch,), errbackArgs=(batch,)
        )

    def _written(self, values: list[object], batch: list[_Op]) -> None:
        self._busy = False
        self._log_store_state()
        for (_, d, _), value in zip(batch, values, strict=True):
            if isinstance(value, _Failed):
                d.errback(Failure(value.error, type(value.error), value.error.__traceback__))
            else:
                d.callback(value)
        self._schedule()

    def _inline_now(self) -> bool:
        return self.inline_sync_limit > 0 and self._clock.seconds() >= self._inline_not_before

    def _judge_sync(self) -> None:
        """Where the next fsyncs run, from how long the one just run on the reactor thread
        took.

        Only the fsyncs run here are judged: one timed on the runner's thread includes
        waiting there for the GIL while the reactor is busy (a 0.3 ms call measured 5.6 ms
        that way), and it would keep them there under load for no reason of the disk's."""
        took = self.store.last_sync_seconds
        if took >= self.inline_sync_stall:
            self._inline_not_before = self._clock.seconds() + self.inline_sync_backoff
        elif took > self.inline_sync_limit:
            self._inline_not_before = self._clock.seconds() + self.inline_sync_retry

    def _batch_failed(self, failure: Failure, batch: list[_Op]) -> None:
        self._busy = False
        self._log_store_state()
        log.failure("spool batch of {count} operations failed", failure, count=len(batch))
        for _, d, _ in batch:
            d.errback(failure)
        self._schedule()

    def _log_store_state(self) -> None:
        """Log what changed in the store's state during the batch (here, on the reactor
        thread: the store's sync may have run on the runner's)."""
        checkpoint, broken = state = (self.store.checkpoint_error, self.store.broken)
        if state == self._logged:
            return
        if broken is not None and self._logged[1] is None:
            log.critical("spool: {why}", why=broken)
        if checkpoint != self._logged[0]:
            if checkpoint is None:
                log.info("spool: the WAL is checkpointed again")
            else:  # once per error, not at every sync it fails again
                log.warn("spool: cannot checkpoint the WAL ({why}); trying again", why=checkpoint)
        self._logged = state

    @property
    def pending_operations(self) -> int:
        return len(self._queue)

    # -- the parts of SpoolBackend a single-process spool answers trivially --

    #: The engine's own queue is fed by recover() and its submissions: no other process
    #: reads this spool.
    shared = False

    @property
    def available(self) -> bool:
        """False once closing, while outcomes cannot be written (disk full), and for good
        once the WAL could not be synced: the engine then takes no submissions (503) and
        ``/healthz`` fails, until a retry succeeds (or a restart)."""
        return not self._closing and self.unavailable_reason is None and self.store.broken is None

    def start_consuming(self, hooks: object) -> None:
        """Nothing to consume: :meth:`recover` gave the engine everything."""

    def health(self) -> dict[str, object]:
        out: dict[str, object] = {"backend": "sqlite", "path": str(self.store.path)}
        error = self.store.broken or self.unavailable_reason
        if error is not None:
            out["error"] = error
        return out

    def metrics_text(self) -> str:
        return ""

    # -- operations --

    def add_job(
        self,
        app: str,
        notifications: Sequence[Notification],
        *,
        now: float,
        send_at: float | None = None,
        async_: bool = False,
        idempotency_key: str | None = None,
        inflight: bool = False,
        fingerprint: str | None = None,
    ) -> Deferred[StoredJob]:
        items = list(notifications)
        # A synchronous job without a key is answered only once its outcomes are recorded
        # (a durable commit, whose fsync covers this one too): until then nothing was
        # promised, so it is committed without an fsync of its own. A retry of a request
        # left unanswered was never safe without a key anyway (docs: Idempotency).
        volatile = not async_ and idempotency_key is None and send_at is None
        if idempotency_key is None:
            return self._grouped(NewJob(app, items, now, send_at, async_, inflight), volatile)
        return self._call(
            lambda s: s.add_job(
                app,
                items,
                now=now,
                send_at=send_at,
                async_=async_,
                idempotency_key=idempotency_key,
                inflight=inflight,
                fingerprint=fingerprint,
            ),
            volatile=volatile,
        )

    def _grouped(self, job: NewJob, volatile: bool) -> Deferred[StoredJob]:
        """Join this batch's group of jobs without a key: one operation and two statements
        for all of them. They share one savepoint (a job without a key can only fail as the
        storage fails, which fails them all anyway)."""
        if self._closing:
            return fail(SpoolClosedError("the spool is closed"))
        group = self._group
        if group is None:
            group = self._group = _JobGroup()
            jobs = group.jobs
            self._call(lambda s: s.add_jobs(jobs), volatile=True).addCallbacks(
                group.stored, group.failed
            )
        d: Deferred[StoredJob] = Deferred()
        group.jobs.append(job)
        group.waiting.append(d)
        group.volatile = group.volatile and volatile
        return d

    def mark_inflight(self, ids: Sequence[int], *, now: float) -> Deferred[None]:
        ids = list(ids)
        return self._call(lambda s: s.mark_inflight(ids, now=now))

    def requeue(self, ids: Sequence[int], *, now: float) -> Deferred[None]:
        ids = list(ids)
        return self._call(lambda s: s.requeue(ids, now=now))

    def record_outcomes(
        self, records: Sequence[OutcomeRecord], *, now: float
    ) -> Deferred[list[str]]:
        """Record outcomes; fires once they are written. A storage failure (disk full) is
        not the caller's: the records are kept and written again, with growing delays, until
        it works or the spool closes. Meanwhile :attr:`available` is False. (Dropping them
        would leave their rows in flight, to be sent again by the next start.)"""
        done: Deferred[list[str]] = Deferred()
        self._write_outcomes(list(records), now, done)
        return done

    def _write_outcomes(
        self, records: list[OutcomeRecord], now: float, done: Deferred[list[str]]
    ) -> None:
        d = self._call(lambda s: s.record_outcomes(records, now=now))
        d.addCallbacks(
            self._outcomes_written,
            self._outcomes_failed,
            callbackArgs=(done,),
            errbackArgs=(records, now, done),
        )

    def _outcomes_written(self, finished: list[str], done: Deferred[list[str]]) -> None:
        if self._outcome_failures and not self._outcome_retries:
            log.info("spool: outcomes are written again; taking submissions again")
            self._outcome_failures = 0
            self.unavailable_reason = None
        done.callback(finished)

    def _outcomes_failed(
        self,
        failure: Failure,
        records: list[OutcomeRecord],
        now: float,
        done: Deferred[list[str]],
    ) -> None:
        if self._closing or not failure.check(SpoolUnavailableError) or self.store.broken:
            # A broken store stays broken until a restart: trying again cannot help.
            done.errback(failure)
            return
        self._outcome_failures += 1
        self.unavailable_reason = f"cannot record outcomes: {failure.getErrorMessage()}"
        delay = min(self.max_retry_delay, 0.5 * 2 ** min(self._outcome_failures - 1, 16))
        log.warn(
            "spool: could not record {count} outcomes ({why}); refusing submissions, trying "
            "again in {delay:g} s",
            count=len(records),
            why=failure.getErrorMessage(),
            delay=delay,
        )
        call = self._clock.callLater(delay, self._retry_outcomes, records, now, done)
        self._outcome_retries[call] = (records, now, done)

    def _retry_outcomes(
        self, records: list[OutcomeRecord], now: float, done: Deferred[list[str]]
    ) -> None:
        self._outcome_retries = {c: v for c, v in self._outcome_retries.items() if c.active()}
        self._write_outcomes(records, now, done)

    def add_invalid_tokens(
        self,
        app: str,
        entries: Sequence[tuple[str, float | None]],
        *,
        now: float,
        source: str = "feedback",
    ) -> Deferred[None]:
        entries = list(entries)
        return self._call(lambda s: s.add_invalid_tokens(app, entries, now=now, source=source))

    def recover(self, *, now: float) -> Deferred[Recovery]:
        return self._call(lambda s: s.recover(now=now), long=True)

    def purge(self, *, before: float) -> Deferred[int]:
        return self._call(lambda s: s.purge(before=before), long=True)

    # Reads write nothing: they make a batch durable only when asked to (job(durable=True)).

    def job(self, job_id: str, *, durable: bool = False) -> Deferred[JobView | None]:
        """The job's view. ``durable``: fires only once everything committed so far, the
        job included, is synced (for an answer that promises the job).

        A job of more than :data:`VIEW_ROWS_HERE` notifications is read on the spool's
        thread: its rows took 30 to 85 ms per 10,000 here, and everything else on the
        reactor would have waited (``benchmarks/job_view.py``)."""

        def whole(view: JobView | int | None) -> JobView | Deferred[JobView | None] | None:
            if not isinstance(view, int):
                return view
            # The first read made the job durable if asked: this one promises nothing more.
            # A close() since the first read waits for this one (close_store).
            d: Deferred[Any] = self._call(
                lambda s: s.job(job_id), volatile=True, long=True, closing=True
            )
            return d

        first: Deferred[JobView | int | None] = self._call(
            lambda s: s.small_job(job_id, max_rows=VIEW_ROWS_HERE), volatile=not durable
        )
        return first.addCallback(whole)

    def find_job(self, app: str, idempotency_key: str) -> Deferred[str | None]:
        return self._call(lambda s: s.find_job(app, idempotency_key), volatile=True)

    def invalid_tokens(
        self, app: str, *, since: float | None = None
    ) -> Deferred[list[InvalidToken]]:
        # The feed may hold every dead token of an app: read on the thread.
        return self._call(lambda s: s.invalid_tokens(app, since=since), volatile=True, long=True)

    def close(self) -> Deferred[None]:
        """Write what is queued, then close the store; later calls fail with SpoolClosedError."""
        if self._closing:
            return fail(SpoolClosedError("the spool is already closed"))
        # Outcomes waiting for a retry get one last try; if it fails they errback, and
        # their rows stay in flight: the next start resumes them (possible duplicates).
        retries, self._outcome_retries = self._outcome_retries, {}
        for call, (records, now, done) in retries.items():
            call.cancel()
            self._write_outcomes(records, now, done)
        barrier = self._call(lambda s: None, long=True)
        self._closing = True

        def close_store(result: object) -> Deferred[None]:
            # Calls answered by the barrier's batch (or one before it) may have queued the
            # rest of their work (a big job's view: Spool.job): one more batch takes it.
            rest: Deferred[None] = self._call(
                lambda s: None, volatile=True, long=True, closing=True
            )
            return rest.addBoth(close_after, result)

        def close_after(rest: object, result: object) -> Deferred[None]:
            # Closed even when a last batch failed; the first failure is still close()'s.
            failed = result if isinstance(result, Failure) else rest

            def closed(_: None) -> None:
                if isinstance(failed, Failure):
                    failed.raiseException()

            return self._runner(self.store.close).addCallback(closed)

        return barrier.addBoth(close_store)


def to_datetime(ts: float | None) -> datetime | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC)
