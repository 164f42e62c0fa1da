"""A spool on Redis Streams, shared by many ``twistd apns`` instances.

Every instance serves the API and sends. A submission is stored by one Lua script (job hash,
idempotency key, its notifications as stream entries: atomic), so the API answers only what
Redis holds. A stream entry is a *chunk*: up to ``chunk_size`` notifications of one job, so
Redis adds, delivers, acknowledges and claims one entry per chunk rather than per
notification (that bookkeeping was most of its CPU per notification). Each app has one stream
and one consumer group; each instance is a consumer named by its instance id and reads
bounded batches (``XREADGROUP COUNT``) for as much as its engine has room for. Outcomes are
recorded per notification by one script per batch, which also acknowledges each entry whose
last outcome it writes; twice a second the stream is trimmed (``XTRIM MINID``) below its
oldest pending entry, so it holds little more than the unfinished work and memory follows the
backlog. (``XDEL`` per entry cost more Redis CPU than everything else per notification.)

Key layout (``P`` is the configured prefix; ``{app}`` is a hash tag)::

    P:{app}:q          stream, one entry per chunk: n = "job first-idx tok,tok,... [id,id,...]"
                       (what is left of a chunk put back at a stop: "job i,j,k tok,tok,tok")
    P:{app}:sched      sorted set of chunks not due yet, scored by send_at
    P:{app}:idem:KEY   idempotency key -> job id (SET NX semantics, expires with the job)
    P:{app}:bad        sorted set token -> reported_at (Redis time): the invalid-token feed
    P:{app}:bad:d      hash token -> JSON details of the feed entry
    P:job:ID           hash: app, created, async, total, remaining, status, finished, tokens,
                       payload, fields (the template every notification of the job shares),
                       fp (the request's fingerprint: a reused idempotency key with another
                       one is refused, as by the SQLite spool), idem
    P:job:ID:r         hash idx -> JSON outcome (first recorded wins); "-" -> a long value
                       that makes Redis keep a big hash as a hash table (see _RECORD)
    P:job:ID:d         hash idx -> 1: recorded twice (delivered twice, possibly)

Failure handling, in short:

* **Takeover**: entries pending (delivered, not acknowledged) longer than ``claim_after`` are
  claimed with ``XAUTOCLAIM`` by a live instance, which sends those of their notifications
  that have no outcome yet, flagged ``may_duplicate``; after ``max_deliveries`` they are
  finished ``unknown`` instead. A process restarted with the same instance id reads its own
  pending entries (``XREADGROUP … 0``) at once. Consumers of stopped instances that hold
  nothing are deleted after ``forget_consumers_after``.
* **Redis unreachable**: :attr:`RedisSpool.available` turns false (the API answers 503,
  ``/healthz`` fails), reads stop, outcomes not yet written wait in memory (bounded: an
  instance reads no more while they wait) and are written first when Redis answers again.
* **A clean stop** puts back (a fresh entry, not flagged) what is left of each chunk with
  nothing in flight; a chunk with a notification in flight without an outcome stays
  pending, for another instance to claim.

Redis Cluster is not supported: the scripts compute job keys from their ids.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import socket
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from twisted.internet.defer import (
    CancelledError,
    Deferred,
    DeferredList,
    FirstError,
    fail,
    succeed,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTCP,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from .._timers import Timer
from .._twisted import cancel_call, in_turns
from ..core.notification import Notification, PushType
from ..core.token_evidence import recorded_kind
from ..credentials import client_tls_options
from .backend import ConsumerHooks, OutcomesHeldError, SpoolUnavailableError
from .metrics import family_lines
from .spool import (
    QUEUED,
    STATES,
    IdempotencyKeyReusedError,
    InvalidToken,
    JobView,
    NotificationView,
    OutcomeRecord,
    Recovery,
    SpoolClosedError,
    SpooledNotification,
    SpoolError,
    StoredJob,
    decode_notification,
    encode_fields,
)

log = Logger()

GROUP = "txapns"

#: A job's view of more notifications than this is parsed that many a reactor turn.
VIEW_RESULTS_PER_TURN = 1_000


# --- scripts ----------------------------------------------------------------------------------

# Store a job: idempotency key (first one wins; a repeat whose request fingerprint differs
# from the first one's is refused, 2), the job hash, and every notification, in the stream or
# (send_at later than Redis's clock) the scheduled set. KEYS: stream, sched, idem.
# ARGV: job prefix, job id, has idem, ttl, app, created, async, send_at, total, tokens,
# payload, fields, fingerprint, entries...
_STORE = """
local jk = ARGV[1] .. ARGV[2]
if ARGV[3] == '1' then
  local old = redis.call('GET', KEYS[3])
  if old then
    local first = redis.call('HMGET', ARGV[1] .. old, 'async', 'fp')
    if ARGV[13] ~= '' and first[2] and first[2] ~= '' and first[2] ~= ARGV[13] then
      return {2, old, '0'}
    end
    return {0, old, first[1] or '0'}
  end
  redis.call('SET', KEYS[3], ARGV[2], 'EX', ARGV[4])
end
redis.call('HSET', jk, 'app', ARGV[5], 'created', ARGV[6], 'async', ARGV[7],
  'send_at', ARGV[8], 'total', ARGV[9], 'remaining', ARGV[9], 'status', 'pending',
  'tokens', ARGV[10], 'payload', ARGV[11], 'fields', ARGV[12], 'fp', ARGV[13],
  'idem', ARGV[3] == '1' and KEYS[3] or '')
local later = false
if ARGV[8] ~= '' then
  local t = redis.call('TIME')
  later = tonumber(ARGV[8]) > tonumber(t[1]) + tonumber(t[2]) / 1000000
end
for i = 14, #ARGV do
  if later then
    redis.call('ZADD', KEYS[2], ARGV[8], ARGV[i])
  else
    redis.call('XADD', KEYS[1], '*', 'n', ARGV[i])
  end
end
return {1, ARGV[2], ARGV[7]}
"""

# Record outcomes (first one per notification wins; a second marks it possibly duplicated),
# finish jobs, add dead tokens to the feed, then XACK the entries whose every notification
# now has its outcome (one command; the stream is trimmed below the oldest pending entry by
# _TRIM, which costs far less than XDEL each). Per job, one HMGET finds what was recorded
# before and one HSET writes the rest, straight from ARGV: a few commands per batch and two
# arguments per notification. KEYS: stream, bad, bad details. ARGV: group, job prefix, ttl,
# then (see grouped_records): number of acks, entry ids; number of dead tokens, (token, feed
# JSON) pairs; then per job: job id, count, (index, outcome JSON) pairs.
_RECORD = """
local LONG = string.rep('-', 65)
local t = redis.call('TIME')
local now = t[1] .. '.' .. string.format('%06d', tonumber(t[2]))
local nacks = tonumber(ARGV[4])
local i = 5 + nacks
local nbad = tonumber(ARGV[i])
for j = i + 1, i + 2 * nbad, 2 do
  redis.call('ZADD', KEYS[2], now, ARGV[j])
  redis.call('HSET', KEYS[3], ARGV[j], ARGV[j + 1])
end
i = i + 1 + 2 * nbad
local finished = {}
while i <= #ARGV do
  local job, k = ARGV[i], tonumber(ARGV[i + 1])
  local first, last = i + 2, i + 1 + 2 * k
  i = last + 1
  local jk = ARGV[2] .. job
  if redis.call('EXISTS', jk) == 1 then
    local rk = jk .. ':r'
    local idx = {}
    for j = first, last, 2 do idx[#idx + 1] = ARGV[j] end
    local got = {}
    for s = 1, #idx, 1000 do
      local part = redis.call('HMGET', rk, unpack(idx, s, math.min(s + 999, #idx)))
      for q = 1, #part do got[#got + 1] = part[q] end
    end
    local dups = {}
    for q = 1, #idx do
      if got[q] then dups[#dups + 1] = idx[q] end
    end
    if k >= 32 then
      -- A long value makes Redis (7.0) store the hash as a hash table; otherwise one HSET
      -- of hundreds of short outcomes (no apns-id) builds a listpack searched linearly on
      -- every insert: 7 times the CPU for 500.
      redis.call('HSET', rk, '-', LONG)
    end
    local added = 0
    if #dups == 0 then
      for s = first, last, 2000 do
        added = added + redis.call('HSET', rk, unpack(ARGV, s, math.min(s + 1999, last)))
      end
    else
      local set = {}
      for q = 1, #idx do
        if not got[q] then
          set[#set + 1] = idx[q]
          set[#set + 1] = ARGV[first + 2 * q - 1]
        end
      end
      for s = 1, #set, 2000 do
        added = added + redis.call('HSET', rk, unpack(set, s, math.min(s + 1999, #set)))
      end
      local d = {}
      for _, x in ipairs(dups) do
        d[#d + 1] = x
        d[#d + 1] = '1'
      end
      for s = 1, #d, 2000 do
        redis.call('HSET', jk .. ':d', unpack(d, s, math.min(s + 1999, #d)))
      end
      redis.call('EXPIRE', jk .. ':d', ARGV[3])
    end
    if added > 0 and redis.call('HINCRBY', jk, 'remaining', -added) <= 0
        and redis.call('HGET', jk, 'status') == 'pending' then
      redis.call('HSET', jk, 'status', 'done', 'finished', now)
      for _, key in ipairs({jk, rk, jk .. ':d'}) do
        redis.call('EXPIRE', key, ARGV[3])
      end
      local ik = redis.call('HGET', jk, 'idem')
      if ik and ik ~= '' then redis.call('EXPIRE', ik, ARGV[3]) end
      finished[#finished + 1] = job
    end
  end
end
for j = 5, 4 + nacks, 1000 do
  redis.call('XACK', KEYS[1], ARGV[1], unpack(ARGV, j, math.min(j + 999, 4 + nacks)))
end
return finished
"""


def grouped_records(flat: Sequence[str]) -> list[object]:
    """Outcome records (six strings each: entry id to acknowledge or "", job id or "",
    index, outcome JSON, dead token or "", its feed JSON) as ``_RECORD`` takes them."""
    acks: list[str] = []
    bad: list[str] = []
    jobs: dict[str, list[str]] = {}
    for i in range(0, len(flat), 6):
        eid, job, idx, value, token, detail = flat[i : i + 6]
        if eid:
            acks.append(eid)
        if token:
            bad += (token, detail)
        if job:
            jobs.setdefault(job, []).extend((idx, value))
    out: list[object] = [len(acks), *acks, len(bad) // 2, *bad]
    for job, pairs in jobs.items():
        out += [job, len(pairs) // 2, *pairs]
    return out


# Trim the stream below the oldest entry still pending (or, none pending, past the last one
# delivered): what is below is finished and acknowledged. Never by MAXLEN, which would drop
# pending and undelivered entries. KEYS: stream. ARGV: group.
_TRIM = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
local last = nil
for _, g in ipairs(groups) do
  for j = 1, #g, 2 do
    if g[j] == 'name' and g[j + 1] ~= ARGV[1] then break end
    if g[j] == 'last-delivered-id' then last = g[j + 1] end
  end
end
if not last then return 0 end
local p = redis.call('XPENDING', KEYS[1], ARGV[1])
local min = p[2]
if not min then
  local ms, seq = string.match(last, '(%d+)-(%d+)')
  min = ms .. '-' .. (tonumber(seq) + 1)
end
return redis.call('XTRIM', KEYS[1], 'MINID', min)
"""

# Move due scheduled entries into the stream (atomically: exactly one instance moves each).
# KEYS: sched, stream. ARGV: at most this many.
_MOVE_DUE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, m in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'n', m)
  redis.call('ZREM', KEYS[1], m)
end
return #due
"""

# Claim entries idle longer than min-idle, with their delivery counts.
# KEYS: stream. ARGV: group, consumer, min idle ms, start, count.
_CLAIM = """
local r = redis.call('XAUTOCLAIM', KEYS[1], ARGV[1], ARGV[2], ARGV[3], ARGV[4],
  'COUNT', ARGV[5])
local counts = {}
for i, e in ipairs(r[2]) do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
  counts[i] = (p[1] and p[1][4]) or 1
end
return {r[1], r[2], counts}
"""

# This consumer's own pending entries (its history: what it held when it stopped), after
# ARGV[4], with their delivery counts (re-reading counts as a delivery). Entries deleted
# while pending are acknowledged (nothing to send). KEYS: stream.
# ARGV: group, consumer, count, after this id.
_HISTORY = """
local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', ARGV[3],
  'STREAMS', KEYS[1], ARGV[4])
local entries = (r and r[1] and r[1][2]) or {}
local out = {}
local counts = {}
local last = ''
for _, e in ipairs(entries) do
  last = e[1]
  if e[2] then
    local p = redis.call('XPENDING', KEYS[1], ARGV[1], e[1], e[1], 1)
    out[#out + 1] = e
    counts[#counts + 1] = (p[1] and p[1][4]) or 1
  else
    redis.call('XACK', KEYS[1], ARGV[1], e[1])
  end
end
return {last, out, counts}
"""

# Forget consumers (other than ARGV[2]) idle longer than ARGV[3] ms with nothing pending:
# stopped instances named hostname-pid would otherwise pile up in XINFO CONSUMERS. Atomic, so
# a consumer is never deleted with entries (DELCONSUMER would drop them from the PEL).
# KEYS: stream. ARGV: group, this consumer, idle ms.
_FORGET = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local ok, cs = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if not ok then return 0 end
local gone = 0
for _, c in ipairs(cs) do
  local f = {}
  for j = 1, #c, 2 do f[c[j]] = c[j + 1] end
  if f['name'] ~= ARGV[2] and f['pending'] == 0 and f['idle'] > tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f['name'])
    gone = gone + 1
  end
end
return gone
"""

# Put entries read but never sent back as fresh entries (delivery count 1 again).
# KEYS: stream. ARGV: group, then (entry id, value) pairs.
_REQUEUE = """
for i = 2, #ARGV, 2 do
  if redis.call('XACK', KEYS[1], ARGV[1], ARGV[i]) == 1 then
    redis.call('XDEL', KEYS[1], ARGV[i])
    redis.call('XADD', KEYS[1], '*', 'n', ARGV[i + 1])
  end
end
return 1
"""

# A job's hashes in one read. ARGV: job key.
_JOB = """
local jk = ARGV[1]
return {redis.call('HGETALL', jk), redis.call('HGETALL', jk .. ':r'),
  redis.call('HGETALL', jk .. ':d')}
"""

# Forget feed entries reported before ARGV[1]. KEYS: bad, bad details.
_PURGE_FEED = """
local old = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
for _, tok in ipairs(old) do redis.call('HDEL', KEYS[2], tok) end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. ARGV[1])
return #old
"""


class Script:
    """A Lua script run with ``EVALSHA``, sent whole (``EVAL``) when Redis does not know it
    (a restarted Redis forgets its script cache)."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.sha = hashlib.sha1(source.encode("utf-8")).hexdigest()

    def __call__(
        self, link: RedisLink, keys: Sequence[str], args: Sequence[object]
    ) -> Deferred[Any]:
        d = link.call("EVALSHA", self.sha, len(keys), *keys, *args)

        def retry(failure: Failure) -> Deferred[Any]:
            if "NOSCRIPT" not in failure.getErrorMessage():
                return failure  # type: ignore[return-value]
            return link.call("EVAL", self.source, len(keys), *keys, *args)

        return d.addErrback(retry)


STORE, RECORD, TRIM, MOVE_DUE, CLAIM, HISTORY, FORGET, REQUEUE, JOB, PURGE_FEED = (
    Script(s)
    for s in (
        _STORE,
        _RECORD,
        _TRIM,
        _MOVE_DUE,
        _CLAIM,
        _HISTORY,
        _FORGET,
        _REQUEUE,
        _JOB,
        _PURGE_FEED,
    )
)


# --- connection -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisAddress:
    """Where Redis is: ``redis://[user:password@]host[:port][/db]`` (``rediss://`` for TLS),
    or Sentinels."""

    host: str = "127.0.0.1"
    port: int = 6379
    db: int = 0
    username: str | None = None
    password: str | None = None
    #: ``(host, port)`` of Sentinels; when given, ``host``/``port`` are not used.
    sentinels: tuple[tuple[str, int], ...] = ()
    #: The primary's name the Sentinels know.
    sentinel_master: str = "mymaster"
    #: TLS (``rediss://``): the server's certificate is verified, and must name ``host``.
    tls: bool = False
    #: PEM file of the CA(s) to verify the server with instead of the system's.
    ca_file: str | None = None

    @classmethod
    def from_url(cls, url: str, **extra: Any) -> RedisAddress:
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "rediss"):
            raise ValueError(f"a Redis URL starts with redis:// or rediss://, not {url!r}")
        path = parts.path.strip("/")
        if path and not path.isdigit():
            raise ValueError(f"the Redis URL's path is a database number, not {path!r}")
        return cls(
            host=parts.hostname or "127.0.0.1",
            port=parts.port or 6379,
            db=int(path or 0),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=parts.scheme == "rediss",
            **extra,
        )


class RedisLink:
    """One connection to Redis through ``txredisapi``, reconnecting by itself.

    :meth:`call` fails at once (:class:`SpoolUnavailableError`) while not connected, instead
    of waiting for a reconnection: the API must answer 503 now, not hang. Every command has a
    reply timeout (``txredisapi`` drops the connection when it passes, which fails the
    commands behind it too), so no wait is unbounded, even on a half-open connection.
    """

    def __init__(
        self,
        reactor: IReactorTCP,
        address: RedisAddress,
        *,
        reply_timeout: float = 5.0,
        connect_timeout: float = 5.0,
    ) -> None:
        import txredisapi  # type: ignore[import-untyped]  # (imports the global reactor)

        plain, sentinel_factory = _factory_classes()
        self.address = address
        # No SELECT for database 0: one round trip less per connection.
        dbid = address.db or None
        options: dict[str, Any] = {
            "dbid": dbid,
            "password": address.password,
            "username": address.username,
            "replyTimeout": reply_timeout,
            "convertNumbers": False,
        }
        if address.sentinels:
            if address.tls:
                raise ValueError("TLS to Redis (rediss://) is not supported with Sentinel")
            sentinel = txredisapi.Sentinel(list(address.sentinels))
            # Ask the Sentinels no longer than a connection attempt may take (not 10 s).
            sentinel.discovery_timeout = connect_timeout
            self._handler = sentinel.master_for(
                address.sentinel_master, factory_class=sentinel_factory, poolsize=1,
                isLazy=True, **options,
            )  # fmt: skip
            self._factory = self._handler._factory
            self._sentinel: Any = sentinel
        else:
            from twisted.internet.endpoints import HostnameEndpoint

            self._factory = plain(
                f"{address.host}:{address.port}",
                dbid,
                1,
                isLazy=True,
                charset="utf-8",
                password=address.password,
                replyTimeout=reply_timeout,
                convertNumbers=False,
                username=address.username,
            )
            endpoint: IStreamClientEndpoint = HostnameEndpoint(
                reactor, address.host, address.port, timeout=connect_timeout
            )
            if address.tls:
                clock = IReactorTime(reactor)
                endpoint = TLSEndpoint(clock, tls_options(address), endpoint, connect_timeout)
            self._factory.startConnecting(endpoint)
            self._handler = self._factory.handler
            self._sentinel = None

    @property
    def connected(self) -> bool:
        return bool(self._factory.size)

    def call(self, *args: object) -> Deferred[Any]:
        if not self.connected:
            return fail(SpoolUnavailableError("Redis is not connected"))
        try:
            d: Deferred[Any] = self._handler.execute_command(*args)
        except Exception as e:  # the connection went away this very turn
            return fail(SpoolUnavailableError(f"Redis: {e}"))
        return d

    def close(self) -> Deferred[Any]:
        d: Deferred[Any] = self._factory.disconnect()
        if self._sentinel is not None:
            d.addBoth(lambda _: self._sentinel.disconnect())
        return d


@functools.cache
def _factory_classes() -> tuple[Any, Any]:
    """txredisapi's connection factories (plain, Sentinel), made to keep trying.

    txredisapi sets each new connection up itself (AUTH, SELECT of a database other than 0,
    and, through Sentinel, ROLE) and stops reconnecting for good when that fails, whatever
    the cause: a wrong password, but also a connection lost or a reply timed out during the
    set-up (Redis restarting at that moment, or a proxy in front of it that accepts the
    connection and closes it while Redis is down). The instance then stayed at 503 until it
    was restarted. Here a failed set-up is a failed attempt like a refused connection: the
    connection is closed, logged, and the next attempt follows the back-off (at most a second
    apart). Only :meth:`RedisLink.close` (``disconnect()``) stops them. Made on first use:
    importing txredisapi installs the global reactor."""
    import txredisapi

    class KeepTrying:
        """Mixed into a ``RedisFactory``: a failed set-up never ends the reconnecting."""

        maxDelay = 1.0  # retry a lost Redis every second, not every 10
        _why: str | None = None

        def stopTrying(self) -> Deferred[None]:
            # Called by txredisapi only from a failed set-up (and from quit()/shutdown(),
            # which this service never sends).
            return succeed(None)

        def connectionError(self, why: str) -> None:
            if why != self._why:  # once per cause, not once a second
                log.warn("{why}; trying again", why=why)
            self._why = why

        def addConnection(self, conn: Any) -> None:
            self._why = None
            super().addConnection(conn)  # type: ignore[misc]

    class FastCommands:
        """Mixed into a ``RedisProtocol``: the same bytes as txredisapi's ``_build_command``,
        with one join instead of several bytearray writes per argument. That cost about
        1.5 µs per argument, and an outcome write sends two per notification: a tenth of an
        instance's CPU (``cluster_throughput.py --profile``)."""

        charset: str
        errors: str

        def _build_command(self, *args: Any, **kwargs: Any) -> bytes:
            parts = [b"*%d\r\n" % len(args)]
            for arg in args:
                if isinstance(arg, str):
                    raw = arg.encode(self.charset, self.errors)
                elif isinstance(arg, bytes):
                    raw = arg
                elif isinstance(arg, float):
                    raw = format(arg, "f").encode()
                else:
                    raw = bytes(arg) if isinstance(arg, bytearray) else str(arg).encode()
                parts += (b"$%d\r\n" % len(raw), raw, b"\r\n")
            return b"".join(parts)

    class Protocol(FastCommands, txredisapi.RedisProtocol):  # type: ignore[misc]
        pass

    class SentinelProtocol(FastCommands, txredisapi.SentinelRedisProtocol):  # type: ignore[misc]
        """txredisapi's, with its set-up's failures handled: it sends AUTH without waiting
        for the reply and returns ROLE's Deferred to no one, so a connection lost during
        the set-up left unhandled errors behind."""

        def connectionMade(self) -> Deferred[None]:
            if self.password is not None:  # a refusal shows in ROLE's reply too
                self.auth(self.password, self.username).addErrback(lambda f: None)

            def check_role(role: Any) -> Any:
                if self.factory.is_master and role[0] != "master":
                    log.info("Redis at {peer} is no longer the primary; asking Sentinel again",
                             peer=self.transport.getPeer())  # fmt: skip
                    self.transport.loseConnection()
                    return None
                return txredisapi.RedisProtocol.connectionMade(self)

            def failed(failure: Failure) -> None:
                self.factory.connectionError(
                    f"Redis error: could not set up a connection: {failure.getErrorMessage()}"
                )
                self.transport.loseConnection()

            d: Deferred[None] = self.role().addCallback(check_role).addErrback(failed)
            return d

    class Plain(KeepTrying, txredisapi.RedisFactory):  # type: ignore[misc]
        protocol = Protocol

    class ThroughSentinel(KeepTrying, txredisapi.SentinelConnectionFactory):  # type: ignore[misc]
        protocol = SentinelProtocol
        maxDelay = 2.0  # also the connect timeout txredisapi gives each attempt

    return Plain, ThroughSentinel


@implementer(IHandshakeListener)
class _AfterHandshake(Protocol):
    """Hands a TLS connection to ``inner`` only once the handshake is done.

    txredisapi sets a connection up (AUTH, SELECT) in ``connectionMade``; started only after
    the handshake, a handshake that fails (an unknown CA, a wrong name) is a failed
    connection attempt logged with its TLS reason, not a connection lost during AUTH."""

    def __init__(self, inner: IProtocol, ready: Deferred[IProtocol]) -> None:
        self._inner = inner
        self._ready = ready
        self._up = False

    def handshakeCompleted(self) -> None:
        self._up = True
        assert self.transport is not None
        self._inner.makeConnection(self.transport)
        if not self._ready.called:
            self._ready.callback(self._inner)

    def dataReceived(self, data: bytes) -> None:
        if self._up:
            self._inner.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._up:
            self._inner.connectionLost(reason)
        elif not self._ready.called:
            log.error("TLS to Redis failed: {why}", why=reason.getErrorMessage())
            self._ready.errback(reason)


class _GateFactory(Factory):
    def __init__(self, factory: IProtocolFactory, ready: Deferred[IProtocol]) -> None:
        self._factory = factory
        self._ready = ready

    def buildProtocol(self, addr: IAddress | None) -> Protocol | None:
        assert addr is not None
        inner = self._factory.buildProtocol(addr)
        if inner is None:
            return None
        return _AfterHandshake(inner, self._ready)


@implementer(IStreamClientEndpoint)
class TLSEndpoint:
    """``wrapped`` with TLS (``creator``); the connection is made once the handshake is done,
    or fails (within ``timeout`` seconds) if it is not."""

    def __init__(
        self,
        clock: IReactorTime,
        creator: IOpenSSLClientConnectionCreator,
        wrapped: IStreamClientEndpoint,
        timeout: float,
    ) -> None:
        self._clock = clock
        self._creator = creator
        self._wrapped = wrapped
        self._timeout = timeout

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        transport: list[Any] = []

        def cancel(_: Deferred[IProtocol]) -> None:
            connecting.cancel()
            if transport:
                transport[0].abortConnection()

        ready: Deferred[IProtocol] = Deferred(cancel)
        gate = _GateFactory(protocolFactory, ready)
        connecting = self._wrapped.connect(TLSMemoryBIOFactory(self._creator, True, gate))

        def connected(protocol: Any) -> None:
            transport.append(protocol.transport)

        def failed(failure: Failure) -> None:
            if not ready.called:
                ready.errback(failure)

        connecting.addCallbacks(connected, failed)
        timer = self._clock.callLater(self._timeout, ready.cancel)
        return ready.addBoth(_cancel_timer_passing, timer)


def _cancel_timer_passing(result: Any, timer: IDelayedCall) -> Any:
    cancel_call(timer)
    return result


def tls_options(address: RedisAddress) -> IOpenSSLClientConnectionCreator:
    """TLS to Redis: verified against the system's CAs or ``ca_file``, for ``host``."""
    ca_pem = None
    if address.ca_file is not None:
        with open(address.ca_file, "rb") as f:
            ca_pem = f.read()
    return client_tls_options(address.host, ca_pem=ca_pem)


def first_cause(failure: Failure) -> Failure:
    """The failure inside a ``DeferredList(fireOnOneErrback=True)``'s ``FirstError``: a read
    that fans out to several calls fails with the first call's failure wrapped, which would
    hide a lost connection from :func:`is_unavailable`."""
    while isinstance(failure.value, FirstError):
        failure = failure.value.subFailure
    return failure


#: Errors with which a reachable Redis refuses to store, for a while: no primary to write to
#: (a replica, ``READONLY``, still after a failover; ``MASTERDOWN``), too few replicas for
#: ``min-replicas-to-write`` (``NOREPLICAS``), or loading its data after a restart.
REFUSALS = frozenset({"NOREPLICAS", "READONLY", "MASTERDOWN", "LOADING"})


def is_unavailable(failure: Failure) -> bool:
    """Is this failure Redis being unreachable, or refusing writes for now (rather than a
    bug or a script error)?"""
    import txredisapi

    failure = first_cause(failure)
    if failure.check(txredisapi.ResponseError):
        message = failure.getErrorMessage()
        return message.removeprefix("ERR ").split(" ", 1)[0] in REFUSALS
    return bool(failure.check(SpoolUnavailableError, txredisapi.ConnectionError, ConnectionError))


def default_instance_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


# --- the spool ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RedisSettings:
    prefix: str = "txapns"
    #: This instance's consumer name (stable across restarts, or hostname-pid).
    instance_id: str = field(default_factory=default_instance_id)
    #: Seconds an entry may stay pending before a live instance takes it over. It must be
    #: longer than an instance may legitimately hold one (queue wait + deadline + retries).
    claim_after: float = 120.0
    #: Seconds after which a consumer (another instance id) that has been idle and holds
    #: nothing is deleted from the group; ``None``: ten times ``claim_after``.
    forget_consumers_after: float | None = None
    #: Deliveries after which an entry is finished ``unknown`` instead of sent again.
    max_deliveries: int = 5
    #: With N > 0, a submission is acknowledged only once ``WAIT N`` says N replicas have it.
    wait_replicas: int = 0
    wait_timeout: float = 1.0
    #: Most notifications one read asks for (XREADGROUP COUNT is this over ``chunk_size``).
    read_batch: int = 1000
    #: Most notifications one stream entry carries. A job of 500 is 5 entries of 100: Redis
    #: adds, delivers, acknowledges and claims entries, so its CPU per notification falls with
    #: the chunk; an instance that stops with a chunk half sent leaves all of it to be claimed
    #: (what has an outcome is not sent again).
    chunk_size: int = 100
    #: Seconds a read blocks for new entries (finite: a dead connection is noticed).
    block: float = 2.0
    #: Seconds between two moves of due scheduled entries (and two takeover scans).
    schedule_interval: float = 0.5
    #: Seconds between two checks of the jobs synchronous requests wait for.
    waiter_interval: float = 0.05
    #: Seconds between two reads of the queue gauges for ``/metrics``.
    gauge_interval: float = 5.0
    #: Seconds job views, idempotency keys and feed entries are kept after a job is done.
    results_ttl: float = 7 * 86400.0
    #: Seconds an outcome write may wait before its Deferred fails (the outcome itself stays
    #: in memory until Redis takes it).
    write_timeout: float = 10.0
    #: Seconds a clean stop waits to write what is left.
    close_timeout: float = 5.0
    #: ``False``: an API-only instance; it never reads or claims entries (see
    #: :attr:`~txapns.service.config.RedisSpoolConfig.consume`).
    consume: bool = True


@dataclass(slots=True)
class _Chunk:
    """A stream entry this instance read and has not acknowledged."""

    app: str
    entry_id: str
    job_id: str
    deliveries: int
    #: Ids (:class:`_Held`) of its notifications this instance sends.
    members: list[int] = field(default_factory=list)
    #: How many of them have no outcome yet; the record of the last one acknowledges it.
    open: int = 0


@dataclass(slots=True)
class _Held:
    """A notification of a :class:`_Chunk`, handed to the engine and not finished."""

    chunk: _Chunk
    index: int
    token: str
    apns_id: str | None
    inflight: bool = False


@dataclass(slots=True)
class _Pending:
    """Outcome records waiting to be written, and whom to tell."""

    app: str
    args: list[str]
    done: Deferred[list[str]]
    #: Written in this order, also after an outage: an entry is acknowledged with the last
    #: outcome of its notifications, never before the others are written.
    seq: int = 0


@dataclass(slots=True)
class QueueGauges:
    depth: int = 0
    pending: int = 0
    oldest_pending_age: float = 0.0
    scheduled: int = 0
    claimed: int = 0
    dead_letters: int = 0
    read: int = 0


def chunk_value(
    job_id: str, indices: Sequence[int], tokens: Sequence[str], apns_ids: Sequence[str | None]
) -> str:
    """A stream entry's value: ``"job first-index token,token,… [apns-id,apns-id,…]"``, or,
    when the indices are not consecutive (what is left of a chunk), ``"job i,j,k …"``."""
    first = indices[0]
    if list(indices) == list(range(first, first + len(indices))):
        where = str(first)
    else:
        where = ",".join(map(str, indices))
    value = f"{job_id} {where} {','.join(tokens)}"
    if any(a is not None for a in apns_ids):
        value += " " + ",".join(a or "" for a in apns_ids)
    return value


def parse_chunk(value: str) -> tuple[str, list[int], list[str], list[str | None]]:
    """:func:`chunk_value` read back: job id, indices, tokens, apns-ids."""
    parts = value.split(" ")
    tokens = parts[2].split(",")
    if "," in parts[1]:
        indices = [int(i) for i in parts[1].split(",")]
    else:
        first = int(parts[1])
        indices = list(range(first, first + len(tokens)))
    ids: list[str | None] = (
        [a or None for a in parts[3].split(",")] if len(parts) > 3 else [None] * len(tokens)
    )
    return parts[0], indices, tokens, ids


#: What every notification of a job shares: Notification's fields between token and apns-id.
_Shared = tuple[bytes, int | None, int | None, str | None, PushType | None, str | None]


def _num(value: float | None) -> str:
    """A number (or None) as JSON, as json.dumps writes it."""
    return "null" if value is None else repr(value)


def _text(value: str | None) -> str:
    """A string (or None) as JSON; an apns-id (letters, digits, -) quoted as it is."""
    if value is None:
        return "null"
    if value.isascii() and value.replace("-", "").isalnum():
        return f'"{value}"'
    return json.dumps(value)


def _pairs(flat: Sequence[Any]) -> dict[str, Any]:
    it = iter(flat)
    return dict(zip(it, it, strict=True))


class RedisSpool:
    """The :class:`~txapns.service.backend.SpoolBackend` on Redis Streams (see the module)."""

    shared = True

    def __init__(
        self,
        link: RedisLink,
        blocking_link: Callable[[], RedisLink],
        clock: IReactorTime,
        apps: Iterable[str],
        settings: RedisSettings | None = None,
    ) -> None:
        self.link = link
        self._clock = clock
        self.settings = s = settings or RedisSettings()
        self.apps = tuple(apps)
        self._p = s.prefix
        self._job_prefix = f"{s.prefix}:job:"
        self._blocking = {app: blocking_link() for app in self.apps}
        self._hooks: ConsumerHooks | None = None
        self._closing = False
        self._up = True
        self._next_id = 1
        self._held: dict[int, _Held] = {}
        self._held_entries: dict[str, _Chunk] = {}
        #: A probe (see _probe) is out: one at a time.
        self._probing = False
        #: Entries whose last outcome is recorded and whose acknowledgement is not written
        #: yet: a read of our own pending entries must not take them again.
        self._acking: set[str] = set()
        #: Per app, where the read of this consumer's own pending entries (left by an earlier
        #: process with the same instance id) has got to; gone once it is done.
        self._history: dict[str, str] = {}
        self._write_seq = 0
        self._forgot_at = -math.inf
        self._outbox: list[_Pending] = []
        self._unwritten: dict[str, int] = dict.fromkeys(self.apps, 0)
        self._writing = 0
        #: The held outcomes' write, at the end of the turn.
        self._flush_timer = Timer(clock, self._flush)
        self._reading: dict[str, bool] = dict.fromkeys(self.apps, False)
        #: Per app, its next read.
        self._wake_timers = {
            app: Timer(clock, functools.partial(self._read, app)) for app in self.apps
        }
        self._claim_cursor: dict[str, str] = dict.fromkeys(self.apps, "0-0")
        #: Per job: what its notifications share (Notification's fields after the token, but
        #: the apns-id), decoded once, and its send_at.
        self._payloads: dict[str, tuple[_Shared, float | None]] = {}
        self._loops: list[LoopingCall] = []
        self._groups_ready: set[str] = set()
        self.gauges = {app: QueueGauges() for app in self.apps}
        self.outages = 0

    # -- keys --

    def _key(self, app: str, kind: str) -> str:
        return f"{self._p}:{{{app}}}:{kind}"

    # -- availability --

    @property
    def available(self) -> bool:
        return self._up and not self._closing and self.link.connected

    def _down(self, failure: Failure, what: str) -> None:
        if self._closing:
            return
        if self._up:
            self.outages += 1
            log.error(
                "Redis unavailable ({what}): {why}; refusing new work until it answers",
                what=what,
                why=failure.getErrorMessage(),
            )
        self._up = False

    def _probe(self) -> None:
        """While down: a small write (a PING would pass on a replica, or on a primary that
        refuses writes for want of replicas); once it is taken, write what waits, then read
        again."""
        if self._up or self._closing or self._probing:
            return
        self._probing = True
        key = f"{self._p}:probe:{self.settings.instance_id}"
        d = self.link.call("SET", key, "1", "PX", 60_000)
        if self.settings.wait_replicas > 0:
            # Down for want of replicas (a WAIT shortfall): back only once they confirm a
            # write again, not at the first write the primary takes (that flapped up and down
            # with every refused submission).
            d.addCallback(self._wait_replicas)
        d.addCallbacks(self._back, lambda f: None).addBoth(self._probed)

    def _probed(self, _: object) -> None:
        self._probing = False

    def _back(self, _: object) -> None:
        if self._up or self._closing:
            return
        log.info(
            "Redis answers again; writing {count} held outcomes first", count=self._held_outcomes()
        )
        self._up = True
        self._groups_ready.clear()
        self._flush()
        for app in self.apps:
            if self._hooks is not None and self.settings.consume:
                # A read whose reply the outage cut left its entries pending for us: read
                # our own pending entries first (those we hold or are acknowledging are
                # skipped), instead of leaving them to a takeover after claim_after.
                self._history[app] = "0"
            self._wake(app)

    def _held_outcomes(self) -> int:
        return sum(self._unwritten.values())

    def _failed(self, failure: Failure, what: str) -> Failure:
        """Errback for reads/stores: an outage becomes SpoolUnavailableError (503)."""
        if is_unavailable(failure) or failure.check(TimeoutError):
            self._down(failure, what)
            if not failure.check(SpoolUnavailableError):
                return Failure(SpoolUnavailableError(f"Redis: {failure.getErrorMessage()}"))
        return failure

    def _check_open(self) -> None:
        if self._closing:
            raise SpoolClosedError("the spool is closed")
        if not self.available:
            raise SpoolUnavailableError("Redis is unavailable")

    # -- submissions --

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
        if inflight:  # the engine never asks a shared spool: its consumers hand work out
            return fail(ValueError("a shared spool cannot store notifications in flight"))
        try:
            self._check_open()
        except SpoolError as e:
            return fail(e)
        if not notifications:
            return fail(ValueError("a job needs notifications"))
        job_id = uuid.uuid4().hex
        first = notifications[0]
        tokens = [n.token_hex for n in notifications]
        ids = [n.apns_id for n in notifications]
        size = self.settings.chunk_size
        entries = [
            chunk_value(job_id, range(i, min(i + size, len(tokens))), tokens[i : i + size],
                        ids[i : i + size])
            for i in range(0, len(tokens), size)
        ]  # fmt: skip
        args: list[object] = [
            self._job_prefix,
            job_id,
            "1" if idempotency_key is not None else "0",
            int(self.settings.results_ttl),
            app,
            repr(now),
            "1" if async_ else "0",
            "" if send_at is None else repr(send_at),
            len(notifications),
            ",".join(tokens),
            first.payload,
            encode_fields(first),
            fingerprint if fingerprint is not None and idempotency_key is not None else "",
            *entries,
        ]
        keys = [
            self._key(app, "q"),
            self._key(app, "sched"),
            self._key(app, f"idem:{idempotency_key or ''}"),
        ]
        d = STORE(self.link, keys, args)
        if self.settings.wait_replicas > 0:
            d.addCallback(self._wait_replicas)
        return d.addCallbacks(
            self._stored, self._failed, callbackArgs=(len(notifications),), errbackArgs=("store",)
        )

    def _wait_replicas(self, reply: Any) -> Deferred[Any]:
        want = self.settings.wait_replicas

        def check(count: Any) -> Any:
            if int(count) < want:
                raise SpoolUnavailableError(
                    f"only {count} of {want} Redis replicas confirmed the job in "
                    f"{self.settings.wait_timeout}s"
                )
            return reply

        d = self.link.call("WAIT", want, int(self.settings.wait_timeout * 1000))
        return d.addCallback(check)

    def _stored(self, reply: Any, count: int) -> StoredJob:
        fresh, job_id, async_flag = int(reply[0]), str(reply[1]), str(reply[2]) == "1"
        if fresh == 2:
            raise IdempotencyKeyReusedError(job_id)
        if not fresh:
            return StoredJob(job_id, (), True, async_flag)
        return StoredJob(job_id, (), False, async_flag)

    # -- the engine's bookkeeping --

    def mark_inflight(self, ids: Sequence[int], *, now: float) -> Deferred[None]:
        """Local only: an entry handed to the client is what the PEL already says."""
        held = self._held
        for i in ids:
            h = held.get(i)
            if h is not None:
                h.inflight = True
        return succeed(None)

    def requeue(self, ids: Sequence[int], *, now: float) -> Deferred[None]:
        """Not sent after all: the engine keeps it queued; a stop puts it back in Redis."""
        for i in ids:
            h = self._held.get(i)
            if h is not None:
                h.inflight = False
        return succeed(None)

    def recover(self, *, now: float) -> Deferred[Recovery]:
        """Nothing to recover locally: unfinished work is in the stream, for any instance."""
        return succeed(Recovery((), 0, {}))

    def record_outcomes(
        self, records: Sequence[OutcomeRecord], *, now: float
    ) -> Deferred[list[str]]:
        if self._closing and not self._held:
            return fail(SpoolClosedError("the spool is closed"))
        by_app: dict[str, list[str]] = {}
        for r in records:
            h = self._held.pop(r.id, None)
            if h is None:
                continue  # recorded already, or put back at a stop
            c = h.chunk
            c.open -= 1
            ack = ""
            if c.open == 0:  # the entry's last outcome: acknowledged with it
                ack = c.entry_id
                self._held_entries.pop(c.entry_id, None)
                self._acking.add(ack)
            args = by_app.setdefault(c.app, [])
            args += self._record_args(h, r, now, ack)
        done: Deferred[list[str]] = Deferred()
        if not by_app:
            done.callback([])
            return done
        self._enqueue_writes(by_app, done)
        return done

    def _record_args(self, h: _Held, r: OutcomeRecord, now: float, ack: str) -> list[str]:
        # The JSON array json.dumps would write, at a third of its cost (this runs once per
        # notification): the state is one of a few words, the numbers are plain.
        outcome = (
            f'["{r.state}",{_num(r.status)},{_text(r.reason)},{_text(r.apns_id)},'
            f"{_num(r.timestamp)},{r.attempts},{1 if h.chunk.deliveries > 1 else 0},{now!r}]"
        )
        bad = tok = ""
        if r.token_invalid:
            tok = r.token
            bad = json.dumps(
                [r.timestamp, r.reason, r.status, "apns", r.kind], separators=(",", ":")
            )
        return [ack, h.chunk.job_id, str(h.index), outcome, tok, bad]

    def _enqueue_writes(self, by_app: dict[str, list[str]], done: Deferred[list[str]]) -> None:
        """Queue one part per app; ``done`` fires once every part is written."""
        left = [len(by_app)]
        finished: list[str] = []

        def part_done(jobs: list[str]) -> None:
            finished.extend(jobs)
            left[0] -= 1
            if left[0] == 0 and not done.called:
                done.callback(finished)

        def part_failed(failure: Failure) -> None:
            if not done.called:
                done.errback(failure)

        for app, args in by_app.items():
            self._write_seq += 1
            p = _Pending(app, args, Deferred(), self._write_seq)
            p.done.addCallbacks(part_done, part_failed)
            self._unwritten[app] = self._unwritten.get(app, 0) + len(args) // 6
            self._outbox.append(p)
        timer = self._clock.callLater(self.settings.write_timeout, self._write_late, done)
        done.addBoth(self._cancel_timer, timer)
        self._schedule_flush()

    @staticmethod
    def _cancel_timer(result: object, timer: IDelayedCall) -> object:
        cancel_call(timer)
        return result

    def _write_late(self, done: Deferred[list[str]]) -> None:
        if not done.called:
            done.errback(
                OutcomesHeldError(
                    "outcomes not written to Redis yet; held in memory until it answers"
                )
            )

    def _schedule_flush(self) -> None:
        self._flush_timer.start_unless_armed(0)

    def _flush(self) -> None:
        """Write held outcomes, one script per app and at most 1,000 outcomes each.

        One flush at a time: what arrives while a write is out goes in the next one, so under
        load writes grow instead of multiplying (each costs Redis a script run and, with
        ``appendfsync always``, an fsync)."""
        if not self._up or not self._outbox or self._writing:
            return
        outbox, self._outbox = self._outbox, []
        by_app: dict[str, list[_Pending]] = {}
        for p in outbox:
            by_app.setdefault(p.app, []).append(p)
        for app, parts in by_app.items():
            chunk: list[_Pending] = []
            size = 0
            for p in parts:
                chunk.append(p)
                size += len(p.args)
                if size >= 6000:
                    self._write(app, chunk)
                    chunk, size = [], 0
            if chunk:
                self._write(app, chunk)

    def _write(self, app: str, parts: list[_Pending]) -> None:
        flat: list[str] = []
        for p in parts:
            flat += p.args
        args = [GROUP, self._job_prefix, int(self.settings.results_ttl), *grouped_records(flat)]
        keys = [self._key(app, "q"), self._key(app, "bad"), self._key(app, "bad:d")]
        self._writing += 1
        d = RECORD(self.link, keys, args)
        d.addCallbacks(
            self._written, self._write_failed, callbackArgs=(app, parts), errbackArgs=(app, parts)
        )

    def _written(self, finished: list[str], app: str, parts: list[_Pending]) -> None:
        self._writing -= 1
        self._unwritten[app] -= sum(len(p.args) // 6 for p in parts)
        self._acked(parts)
        finished = [str(f) for f in finished]
        for i, p in enumerate(parts):
            p.done.callback(finished if i == 0 else [])
        if self._outbox:
            self._schedule_flush()
        self._wake(app)

    def _write_failed(self, failure: Failure, app: str, parts: list[_Pending]) -> None:
        self._writing -= 1
        if is_unavailable(failure) or failure.check(TimeoutError):
            # Held, in order, until Redis answers again (then _back flushes).
            self._down(failure, "record outcomes")
            self._outbox = sorted(parts + self._outbox, key=lambda p: p.seq)
            return
        self._unwritten[app] -= sum(len(p.args) // 6 for p in parts)
        self._acked(parts)
        log.failure("could not record {app} outcomes in Redis", failure, app=app)
        for p in parts:
            p.done.errback(failure)
        if self._outbox:
            self._schedule_flush()

    def _acked(self, parts: list[_Pending]) -> None:
        """These writes are over: their entries are acknowledged (or, if the write failed
        for good, left pending for a takeover)."""
        for p in parts:
            self._acking.difference_update(p.args[0::6])

    def add_invalid_tokens(
        self,
        app: str,
        entries: Sequence[tuple[str, float | None]],
        *,
        now: float,
        source: str = "feedback",
    ) -> Deferred[None]:
        flat: list[str] = []
        for token, ts in entries:
            kind = "feedback" if source == "feedback" else None
            detail = json.dumps([ts, source, None, source, kind], separators=(",", ":"))
            flat += ["", "", "", "", token.lower(), detail]
        args = [GROUP, self._job_prefix, int(self.settings.results_ttl), *grouped_records(flat)]
        keys = [self._key(app, "q"), self._key(app, "bad"), self._key(app, "bad:d")]
        d = RECORD(self.link, keys, args)
        return d.addCallbacks(lambda _: None, self._failed, errbackArgs=("feedback",))

    def purge(self, *, before: float) -> Deferred[int]:
        """Finished jobs expire by themselves (``results_ttl``); forget old feed entries."""
        ds = [
            PURGE_FEED(self.link, [self._key(app, "bad"), self._key(app, "bad:d")], [repr(before)])
            for app in self.apps
        ]
        return DeferredList(ds, fireOnOneErrback=True, consumeErrors=True).addCallback(lambda _: 0)

    # -- reads for the API --

    def job(self, job_id: str, *, durable: bool = False) -> Deferred[JobView | None]:
        # ``durable`` asks nothing more here: a job is answered for only once Redis has it.
        if not job_id.isalnum():
            return succeed(None)
        d = JOB(self.link, [], [self._job_prefix + job_id])
        return d.addCallbacks(
            self._job_view, self._failed, callbackArgs=(job_id,), errbackArgs=("read a job",)
        )

    def _job_view(self, reply: Any, job_id: str) -> JobView | Deferred[JobView | None] | None:
        meta = _pairs(reply[0])
        if not meta:
            return None
        outcomes = _pairs(reply[1])
        dups = _pairs(reply[2])
        tokens = meta["tokens"].split(",")
        send_at = float(meta["send_at"]) if meta.get("send_at") else None
        created = float(meta["created"])
        counts = dict.fromkeys(STATES, 0)
        results: list[NotificationView] = []

        def parse(start: int, stop: int) -> None:
            for i in range(start, stop):
                token = tokens[i]
                raw = outcomes.get(str(i))
                if raw is None:
                    counts[QUEUED] += 1
                    results.append(
                        NotificationView(i, i, token, QUEUED, None, None, None, None, 0, 0,
                                         send_at, created)
                    )  # fmt: skip
                    continue
                state, status, reason, apns_id, ts, attempts, dup, updated = json.loads(raw)
                counts[state] += 1
                resumed = 1 if dup or str(i) in dups else 0
                results.append(
                    NotificationView(i, i, token, state, status, reason, apns_id, ts, attempts,
                                     resumed, send_at, updated)
                )  # fmt: skip

        def view(_: object = None) -> JobView:
            finished = float(meta["finished"]) if meta.get("finished") else None
            return JobView(
                job_id=job_id,
                app=meta["app"],
                created=created,
                status="done" if meta["status"] == "done" else "pending",
                async_=meta["async"] == "1",
                total=int(meta["total"]),
                finished=finished,
                counts=counts,
                results=tuple(results),
            )

        if len(tokens) <= VIEW_RESULTS_PER_TURN:
            parse(0, len(tokens))
            return view()
        # A big job's reply is parsed a share a reactor turn: 10,000 at once took 42 ms here,
        # with nothing else running meanwhile.
        parsed = in_turns(self._clock, len(tokens), VIEW_RESULTS_PER_TURN, parse)
        return parsed.addCallback(view)

    def find_job(self, app: str, idempotency_key: str) -> Deferred[str | None]:
        d = self.link.call("GET", self._key(app, f"idem:{idempotency_key}"))
        return d.addErrback(self._failed, "find a job")

    def invalid_tokens(
        self, app: str, *, since: float | None = None, limit: int = 10_000
    ) -> Deferred[list[InvalidToken]]:
        """As :meth:`~txapns.service.spool.SpoolStore.invalid_tokens`: oldest first, ``limit``
        of them plus any sharing the last one's ``reported_at`` (Redis's clock)."""
        d = Deferred.fromCoroutine(self._invalid_tokens(app, since, limit))
        return d.addErrback(self._failed, "feed")

    async def _invalid_tokens(
        self, app: str, since: float | None, limit: int
    ) -> list[InvalidToken]:
        low = "-inf" if since is None else f"({since!r}"
        key = self._key(app, "bad")
        flat = await self.link.call(
            "ZRANGEBYSCORE", key, low, "+inf", "WITHSCORES", "LIMIT", 0, limit
        )
        rows = [(str(flat[i]), float(flat[i + 1])) for i in range(0, len(flat), 2)]
        if len(rows) == limit:
            last_token, last_at = rows[-1]
            same = await self.link.call("ZRANGEBYSCORE", key, repr(last_at), repr(last_at))
            rows += [(t, last_at) for t in sorted(map(str, same)) if t > last_token]
        if not rows:
            return []
        values = await self.link.call("HMGET", self._key(app, "bad:d"), *[t for t, _ in rows])
        return self._tokens(app, rows, values)

    @staticmethod
    def _tokens(
        app: str, rows: list[tuple[str, float]], values: list[str | None]
    ) -> list[InvalidToken]:
        out: list[InvalidToken] = []
        for (token, at), raw in zip(rows, values, strict=True):
            fields: list[Any] = json.loads(raw) if raw else [None, None, None, "apns"]
            ts, reason, status, source = fields[:4]
            # Entries written before the kind was stored get it from what they hold.
            kind = fields[4] if len(fields) > 4 and fields[4] else None
            kind = kind or recorded_kind(source, status, reason)
            out.append(InvalidToken(app, token, ts, reason, status, source, at, kind))
        return out

    # -- consuming --

    def start_consuming(self, hooks: ConsumerHooks) -> None:
        self._hooks = hooks
        for fn, every in (
            (self._tick, self.settings.schedule_interval),
            (self._poll_waiters, self.settings.waiter_interval),
            (self._refresh_gauges, self.settings.gauge_interval),
        ):
            loop = LoopingCall(fn)
            loop.clock = self._clock
            loop.start(every, now=True).addErrback(self._loop_failed)
            self._loops.append(loop)
        for app in self.apps:
            self._history[app] = "0"
            self._wake(app)

    def _loop_failed(self, failure: Failure) -> None:
        log.failure("a Redis spool loop stopped", failure)

    def _ensure_group(self, app: str) -> Deferred[None]:
        if app in self._groups_ready:
            return succeed(None)
        d = self.link.call("XGROUP", "CREATE", self._key(app, "q"), GROUP, "0", "MKSTREAM")

        def created(_: object) -> None:
            self._groups_ready.add(app)

        def exists(failure: Failure) -> None:
            if "BUSYGROUP" not in failure.getErrorMessage():
                failure.raiseException()
            self._groups_ready.add(app)

        return d.addCallbacks(created, exists)

    def _room(self, app: str) -> int:
        if self._hooks is None or self._closing or not self._up or not self.settings.consume:
            return 0
        return self._hooks.room(app) - self._unwritten.get(app, 0)

    def _wake(self, app: str) -> None:
        """Read for ``app`` soon, if a read is not running already."""
        if self._reading.get(app) or self._closing or self._hooks is None:
            return
        timer = self._wake_timers[app]
        when = timer.when()
        if when is not None and when <= self._clock.seconds():
            return
        timer.start(0)

    def _entries_for(self, room: int) -> int:
        """How many stream entries to ask for when the engine has ``room`` notifications."""
        return max(1, min(room, self.settings.read_batch) // self.settings.chunk_size)

    def _read(self, app: str) -> None:
        if self._reading[app] or not self._up or self._closing:
            return
        room = self._room(app)
        if room <= 0:
            return  # woken again by an outcome (room freed) or the next tick
        link = self._blocking[app]
        if not link.connected:
            # Still connecting (or reconnecting): the main link decides whether Redis is down.
            self._wake_timers[app].start(0.1)
            return
        self._reading[app] = True
        count = self._entries_for(room)
        block_ms = int(self.settings.block * 1000)
        q = self._key(app, "q")

        def read(_: object) -> Deferred[Any]:
            after = self._history.get(app)
            if after is not None:
                # What an earlier process with this instance id held: at once, not after
                # claim_after (the PEL is ours); then new entries.
                d = HISTORY(self.link, [q], [GROUP, self.settings.instance_id, count, after])
                return d.addCallback(self._got_history, app)
            d = link.call(
                "XREADGROUP", "GROUP", GROUP, self.settings.instance_id, "COUNT", count,
                "BLOCK", block_ms, "STREAMS", q, ">",
            )  # fmt: skip
            return d.addCallback(self._got, app)

        d = self._ensure_group(app).addCallback(read)
        d.addCallbacks(self._read_done, self._read_failed, callbackArgs=(app,), errbackArgs=(app,))

    def _got(self, reply: Any, app: str) -> Deferred[None] | None:
        if not reply:
            return None
        entries = reply[0][1]
        return self._take(app, [(str(e[0]), e[1], 1) for e in entries if e[1]])

    def _got_history(self, reply: Any, app: str) -> Deferred[None] | None:
        last, entries, counts = str(reply[0]), reply[1], reply[2]
        if not last:
            self._history.pop(app, None)
            return None
        self._history[app] = last
        taken = [(str(e[0]), e[1], int(c)) for e, c in zip(entries, counts, strict=True)]
        if taken:
            log.info(
                "{app}: resuming {count} entries this instance id held before it stopped",
                app=app,
                count=len(taken),
            )
        return self._take(app, taken)

    def _read_done(self, _: object, app: str) -> None:
        self._reading[app] = False
        self._wake(app)

    def _read_failed(self, failure: Failure, app: str) -> None:
        self._reading[app] = False
        failure = first_cause(failure)
        if self._closing:
            return
        if is_unavailable(failure) or failure.check(TimeoutError):
            self._down(failure, f"read {app}")
        elif "NOGROUP" in failure.getErrorMessage():
            log.error(
                "Redis lost the consumer group of {app} (data lost or flushed?); recreating it "
                "from the start of the stream",
                app=app,
            )
            self._groups_ready.discard(app)
            self._wake_timers[app].start(1.0)
        else:
            log.failure("reading {app} from Redis failed; retrying in 1s", failure, app=app)
            self._wake_timers[app].start(1.0)

    def _take(
        self, app: str, entries: list[tuple[str, Any, int]], *, claimed: bool = False
    ) -> Deferred[None]:
        """Turn stream entries into work for the engine (dead-lettering the worn-out ones).

        An entry delivered before may be partly done: its notifications that have an outcome
        are not sent again."""
        parsed: list[tuple[str, int, tuple[str, list[int], list[str], list[str | None]]]] = []
        for entry_id, fields, deliveries in entries:
            if entry_id in self._held_entries or entry_id in self._acking:
                continue  # ours already (claimed back from ourselves, or being acknowledged)
            flat = fields if isinstance(fields, list) else []
            value = str(flat[1]) if len(flat) >= 2 else ""
            if value:
                parsed.append((entry_id, deliveries, parse_chunk(value)))
        missing = sorted({p[2][0] for p in parsed if p[2][0] not in self._payloads})
        again = [p for p in parsed if p[1] > 1]
        calls = [
            self.link.call("HMGET", self._job_prefix + j, "payload", "fields", "send_at")
            for j in missing
        ] + [
            self.link.call("HMGET", f"{self._job_prefix}{job}:r", *indices)
            for _, _, (job, indices, _, _) in again
        ]
        d: Deferred[Any] = succeed([])
        if calls:
            d = DeferredList(calls, fireOnOneErrback=True, consumeErrors=True)

        def got(results: list[tuple[bool, Any]]) -> None:
            if len(self._payloads) > 4096:
                self._payloads.clear()
            for j, (_, v) in zip(missing, results, strict=False):
                if v[0] is not None:
                    shared = decode_notification("", v[0].encode("utf-8"), v[1], None)
                    self._payloads[j] = (
                        (shared.payload, shared.expiry, shared.priority, shared.topic,
                         shared.push_type, shared.collapse_id),
                        float(v[2]) if v[2] else None,
                    )  # fmt: skip
            recorded: dict[str, set[int]] = {}
            for (entry_id, _, (_, indices, _, _)), (_, v) in zip(
                again, results[len(missing) :], strict=True
            ):
                recorded[entry_id] = {i for i, o in zip(indices, v, strict=True) if o is not None}
            self._feed(app, parsed, recorded, claimed)

        return d.addCallback(got)

    def _feed(
        self,
        app: str,
        parsed: list[tuple[str, int, tuple[str, list[int], list[str], list[str | None]]]],
        recorded: dict[str, set[int]],
        claimed: bool,
    ) -> None:
        items: list[SpooledNotification] = []
        dead: list[OutcomeRecord] = []
        gone: list[OutcomeRecord] = []
        acks: list[str] = []
        limit = self.settings.max_deliveries
        fromhex = bytes.fromhex
        for entry_id, deliveries, (job_id, indices, tokens, ids) in parsed:
            chunk = _Chunk(app, entry_id, job_id, deliveries)
            done = recorded.get(entry_id, set())
            template = self._payloads.get(job_id)
            for index, token, apns_id in zip(indices, tokens, ids, strict=True):
                if index in done:
                    continue  # an earlier delivery recorded its outcome
                ident = self._next_id
                self._next_id += 1
                self._held[ident] = _Held(chunk, index, token, apns_id)
                chunk.members.append(ident)
                chunk.open += 1
                if template is None or deliveries > limit:
                    (gone if template is None else dead).append(
                        OutcomeRecord(
                            id=ident,
                            job_id=job_id,
                            app=app,
                            token=token,
                            state="unknown",
                            reason=f"gave up after {deliveries - 1} deliveries",
                        )
                    )
                    continue
                shared, send_at = template
                # (The job was validated when it was stored: the plain constructor, with the
                # fields decoded once per job, not once per notification.)
                n = Notification(fromhex(token), *shared, apns_id)
                items.append(SpooledNotification(ident, job_id, app, n, send_at, deliveries - 1))
            if chunk.open:
                self._held_entries[entry_id] = chunk
            else:
                acks.append(entry_id)  # every outcome written already: only the ack was missing
        g = self.gauges[app]
        g.read += len(items)
        if claimed:
            g.claimed += len(items) + len(dead)
        if dead:
            g.dead_letters += len(dead)
            log.warn(
                "{app}: {count} notifications were delivered {limit} times without an outcome; "
                "finished as unknown",
                app=app,
                count=len(dead),
                limit=limit,
            )
        if gone:
            log.warn("{app}: {count} queued notifications of purged jobs dropped", app=app,
                     count=len(gone))  # fmt: skip
        if dead or gone:
            self.record_outcomes(dead + gone, now=self._clock.seconds()).addErrback(
                lambda f: log.failure("could not record dead letters", f)
            )
        if acks:
            written: Deferred[list[str]] = Deferred()
            written.addErrback(lambda f: log.failure("could not acknowledge finished entries", f))
            self._enqueue_writes({app: [x for e in acks for x in (e, "", "", "", "", "")]}, written)
        if items and self._hooks is not None:
            self._hooks.feed(app, items)

    def _tick(self) -> None:
        """Every ``schedule_interval``: probe Redis if down; move due scheduled entries;
        take over entries pending too long."""
        if self._closing:
            return
        if not self._up:
            self._probe()
            return
        for app in self.apps:
            self._wake(app)
            MOVE_DUE(self.link, [self._key(app, "sched"), self._key(app, "q")], [1000]).addErrback(
                self._tick_failed, "move scheduled"
            )
            self._claim(app)
            if app in self._groups_ready:
                TRIM(self.link, [self._key(app, "q")], [GROUP]).addErrback(
                    self._tick_failed, "trim"
                )
        self._forget_consumers()

    def _forget_consumers(self) -> None:
        """Now and then, delete consumers idle far longer than ``claim_after`` that hold
        nothing (stopped instances), so the group's consumer list does not grow for ever."""
        s = self.settings
        after = s.forget_consumers_after
        if after is None:
            after = 10 * s.claim_after
        now = self._clock.seconds()
        if now - self._forgot_at < min(60.0, after / 2):
            return
        self._forgot_at = now

        def forgot(count: Any, app: str) -> None:
            if int(count):
                log.info(
                    "{app}: forgot {count} consumers idle over {after}s with nothing pending "
                    "(stopped instances)",
                    app=app,
                    count=int(count),
                    after=after,
                )

        for app in self.apps:
            if app in self._groups_ready:
                args = [GROUP, s.instance_id, int(after * 1000)]
                d = FORGET(self.link, [self._key(app, "q")], args)
                d.addCallback(forgot, app).addErrback(self._tick_failed, "forget consumers")

    def _claim(self, app: str) -> None:
        room = self._room(app)
        if room <= 0 or app not in self._groups_ready:
            return
        args = [
            GROUP,
            self.settings.instance_id,
            int(self.settings.claim_after * 1000),
            self._claim_cursor[app],
            self._entries_for(room),
        ]
        d = CLAIM(self.link, [self._key(app, "q")], args)

        def claimed(reply: Any) -> Deferred[None] | None:
            self._claim_cursor[app] = str(reply[0])
            entries, counts = reply[1], reply[2]
            taken = [(str(e[0]), e[1], int(c)) for e, c in zip(entries, counts, strict=True) if e]
            if not taken:
                return None
            log.info(
                "{app}: took over {count} entries pending over {after}s (another instance "
                "stopped?)",
                app=app,
                count=len(taken),
                after=self.settings.claim_after,
            )
            return self._take(app, taken, claimed=True)

        d.addCallback(claimed).addErrback(self._tick_failed, "claim")

    def _tick_failed(self, failure: Failure, what: str) -> None:
        if is_unavailable(failure) or failure.check(TimeoutError):
            self._down(failure, what)
        else:
            log.failure("Redis spool: {what} failed", failure, what=what)

    def _poll_waiters(self) -> None:
        """Jobs someone waits for may be finished by another instance: look."""
        if self._hooks is None or not self._up:
            return
        waiting = list(self._hooks.waiting())
        if not waiting:
            return
        hooks = self._hooks

        def check(status: Any, job_id: str) -> None:
            if status == "done":
                hooks.finished(job_id)

        for job_id in waiting:
            d = self.link.call("HGET", self._job_prefix + job_id, "status")
            d.addCallback(check, job_id)
            d.addErrback(lambda f: None)  # down: _tick notices and probes

    def _refresh_gauges(self) -> None:
        if not self._up:
            return
        for app in self.apps:
            q = self._key(app, "q")
            g = self.gauges[app]

            def depth(n: Any, g: QueueGauges = g) -> None:
                g.depth = int(n)

            def pending(reply: Any, g: QueueGauges = g) -> None:
                g.pending = int(reply[0]) if reply else 0
                if g.pending and reply[1]:
                    g.oldest_pending_age = max(
                        0.0, self._clock.seconds() - int(str(reply[1]).split("-")[0]) / 1000
                    )
                else:
                    g.oldest_pending_age = 0.0

            def scheduled(n: Any, g: QueueGauges = g) -> None:
                g.scheduled = int(n)

            self.link.call("XLEN", q).addCallback(depth).addErrback(lambda f: None)
            if app in self._groups_ready:
                self.link.call("XPENDING", q, GROUP).addCallback(pending).addErrback(lambda f: None)
            self.link.call("ZCARD", self._key(app, "sched")).addCallback(scheduled).addErrback(
                lambda f: None
            )

    # -- observability --

    def health(self) -> dict[str, object]:
        return {
            "backend": "redis",
            "redis": "up" if self.available else "down",
            "instance_id": self.settings.instance_id,
            "consume": self.settings.consume,
            "held_outcomes": self._held_outcomes(),
            "outages": self.outages,
        }

    def metrics_text(self) -> str:
        g = self.gauges
        apps = sorted(g)

        def per_app(values: dict[str, float]) -> list[tuple[dict[str, str], float]]:
            return [({"app": a}, values[a]) for a in apps]

        lines: list[str] = []
        lines += family_lines(
            "txapns_redis_up", "gauge", "1 while Redis answers this instance.",
            [({}, 1 if self.available else 0)],
        )  # fmt: skip
        for name, kind, text, attr in (
            ("txapns_redis_queue_depth", "gauge", "Entries in the app's stream (unfinished).",
             "depth"),
            ("txapns_redis_pending", "gauge", "Entries delivered to an instance, not finished.",
             "pending"),
            ("txapns_redis_oldest_pending_age_seconds", "gauge",
             "Age of the oldest pending entry (since it was queued).", "oldest_pending_age"),
            ("txapns_redis_scheduled", "gauge", "Entries waiting for their send_at.",
             "scheduled"),
            ("txapns_redis_claimed_total", "counter",
             "Notifications this instance took over from a stopped one.", "claimed"),
            ("txapns_redis_dead_letters_total", "counter",
             "Entries finished unknown after max_deliveries.", "dead_letters"),
        ):  # fmt: skip
            lines += family_lines(name, kind, text, per_app({a: getattr(g[a], attr) for a in apps}))
        lines += family_lines(
            "txapns_redis_held_outcomes", "gauge",
            "Outcomes waiting in memory for Redis to take them.",
            per_app({a: self._unwritten.get(a, 0) for a in apps}),
        )  # fmt: skip
        return "\n".join(lines) + "\n"

    # -- stopping --

    def close(self) -> Deferred[None]:
        """Stop reading; write held outcomes and put back unsent entries (within
        ``close_timeout``); close the connections."""
        if self._closing:
            return fail(SpoolClosedError("the spool is already closed"))
        self._closing = True
        for loop in self._loops:
            if loop.running:
                loop.stop()
        for wake in self._wake_timers.values():
            wake.cancel()
        # Reads first: a blocking read still waiting would take the entries put back below.
        readers = [link.close() for link in self._blocking.values()]
        # close_timeout bounds both steps: the timer cancels the step under way, and writes
        # that start after it fired are cancelled at once (sent, never waited for).
        step: list[Deferred[Any]] = [DeferredList(readers, consumeErrors=True)]
        timer = self._clock.callLater(self.settings.close_timeout, lambda: step[0].cancel())

        def writes(_: object) -> Deferred[Any]:
            step[0] = self._finish_writes()
            if not timer.active():
                step[0].cancel()
            return step[0]

        done = step[0].addCallback(writes)
        done.addBoth(self._cancel_timer, timer)

        def report(_: object) -> Deferred[Any]:
            left = self._held_outcomes()
            if left:
                log.warn(
                    "closing with {count} outcomes Redis never took; their notifications stay "
                    "pending and another instance sends them again, flagged may_duplicate",
                    count=left,
                )
            return self.link.close()

        return done.addBoth(report).addCallback(lambda _: None)

    def _finish_writes(self) -> Deferred[Any]:
        self._flush()
        steps: list[Deferred[Any]] = [p.done for p in self._outbox]
        steps += self._put_back()
        return DeferredList(steps, consumeErrors=True)

    def _put_back(self) -> list[Deferred[Any]]:
        """Entries with nothing in flight go back as fresh entries holding what is left of
        them (unflagged: never sent). One with a notification in flight without an outcome
        stays pending as a whole, for another instance to claim."""
        by_app: dict[str, list[object]] = {}
        unsent: dict[str, int] = {}
        for entry_id, c in list(self._held_entries.items()):
            held = [self._held[i] for i in c.members if i in self._held]
            if not held or any(h.inflight for h in held):
                continue
            for i in c.members:
                self._held.pop(i, None)
            del self._held_entries[entry_id]
            value = chunk_value(
                c.job_id, [h.index for h in held], [h.token for h in held],
                [h.apns_id for h in held],
            )  # fmt: skip
            by_app.setdefault(c.app, []).extend((entry_id, value))
            unsent[c.app] = unsent.get(c.app, 0) + len(held)
        if not self._up:
            for app, count in unsent.items():
                self._not_put_back(app, count, "Redis is unavailable")
            return []
        return [
            REQUEUE(self.link, [self._key(app, "q")], [GROUP, *args]).addErrback(
                self._put_back_failed, app, unsent[app]
            )
            for app, args in by_app.items()
        ]

    def _put_back_failed(self, failure: Failure, app: str, count: int) -> None:
        # A close_timeout cancels the write (CancelledError, no message): Redis may still run
        # the script it received, and then they were put back after all.
        if failure.check(CancelledError):
            why = "no answer within close_timeout; Redis may still put them back"
        else:
            why = failure.getErrorMessage() or repr(failure.value)
        self._not_put_back(app, count, why)

    def _not_put_back(self, app: str, count: int, why: str) -> None:
        # The script puts back all or nothing: its entries stay pending for this consumer,
        # and another instance claims them after claim_after. Nothing is lost, so a warning.
        log.warn(
            "could not put back {count} unsent notifications of {app} ({why}); they stay "
            "pending and another instance claims them after claim_after",
            count=count,
            app=app,
            why=why,
        )
