"""``txapns doctor --token``: is the app's ``environment`` right for real device tokens?

APNs answers ``BadDeviceToken`` both to a token that is wrong and to a token of the other
environment, so a probe with a made-up token cannot tell a wrong ``environment``. Given real
device tokens, :func:`probe_environment` sends each a silent background notification
(``content-available``, priority 5: nothing is shown) in the configured environment; if most
are rejected as ``BadDeviceToken``, it sends the same to the other environment (a token-auth
key works in both; a certificate may not), and
:func:`~txapns.core.token_evidence.environment_verdict` says which is right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

from twisted.internet.defer import Deferred, DeferredList

from ..core.notification import Notification, PushType
from ..core.result import Result
from ..core.token_evidence import SUSPECT_KINDS, environment_verdict, evidence_kind
from ..interfaces import Sender
from .config import AppConfig, Environment


def device_token_arg(text: str) -> str:
    """``argparse`` type for ``--token``: a device token in hex, checked as APNs would."""
    import argparse

    from ..core.errors import ValidationError
    from ..core.notification import parse_token

    try:
        return parse_token(text).hex()
    except ValidationError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


#: Builds a started-or-startable Sender for an app (``make_sender`` by default).
SenderFactory = Callable[[AppConfig, Any], Sender]


async def probe_environment(
    reactor: Any,
    app: AppConfig,
    tokens: Sequence[str],
    *,
    timeout: float = 10.0,
    sender_for: SenderFactory | None = None,
) -> tuple[bool, str]:
    """Probe ``tokens`` (hex) in ``app``'s environment, and in the other one when most are
    rejected as ``BadDeviceToken`` and the app has no ``host`` override; ``(ok, line)``."""
    if sender_for is None:
        from .senders import make_sender

        sender_for = make_sender
    here = await _probe(reactor, sender_for(app, reactor), app, tokens, timeout)
    other: list[Result] | None = None
    suspects = sum(1 for r in here if evidence_kind(r) in SUSPECT_KINDS)
    if suspects and suspects * 2 >= len(here) and app.host is None:
        flipped: Environment = "sandbox" if app.environment == "production" else "production"
        other_app = replace(app, environment=flipped)
        other = await _probe(reactor, sender_for(other_app, reactor), other_app, tokens, timeout)
    return environment_verdict(app.environment, here, other)


async def _probe(
    reactor: Any, sender: Sender, app: AppConfig, tokens: Sequence[str], timeout: float
) -> list[Result]:
    start = getattr(sender, "start", None)
    if start is not None:
        start()
    topic = PushType.BACKGROUND.topic_for(app.bundle_id) if app.bundle_id else None
    probes = [
        Notification.create(
            t,
            {"aps": {"content-available": 1}},
            priority=5,
            push_type=PushType.BACKGROUND,
            topic=topic,
        )
        for t in tokens
    ]
    results: list[Result | None] = [None] * len(probes)
    waits: list[Deferred[Any]] = []
    for i, n in enumerate(probes):
        d = sender.send(n)
        d.addCallback(_store, results, i)
        d.addTimeout(timeout, reactor)
        d.addErrback(lambda _: None)
        waits.append(d)
    try:
        await DeferredList(waits)
    finally:
        await sender.stop()
    return [
        r if r is not None else Result.unknown_for(n, "no answer (timeout)")
        for r, n in zip(results, probes, strict=True)
    ]


def _store(result: Result, results: list[Result | None], index: int) -> None:
    results[index] = result
