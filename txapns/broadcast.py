"""Broadcast push (iOS 18): managing channels, over Twisted.

A :class:`ChannelManager` creates, reads, lists and deletes an app's broadcast channels on
Apple's management host (:data:`~txapns.core.broadcast.MANAGEMENT_HOSTS`). It is a thin layer
over an :class:`~txapns.http2.HTTP2Client` connected to that host, so pooling, TLS with ALPN
``h2``, provider tokens, deadlines, retries and the circuit breaker are the client's::

    host, port = MANAGEMENT_HOSTS["production"]
    endpoint = apns_endpoint(reactor, "manage", "production")  # txapns.endpoints
    client = HTTP2Client(reactor, endpoint, authority=host, bundle_id=bundle_id,
                         token=token, min_connections=0)  # a connection when first needed
    manager = ChannelManager(client)
    manager.start()
    channel_id = yield manager.create(StoragePolicy.NO_STORAGE)
    result = yield push_client.broadcast(channel_id, payload)  # the app's HTTP2Client

Broadcasts themselves go to the ordinary push host with
:meth:`HTTP2Client.broadcast <txapns.http2.HTTP2Client.broadcast>`.

Every method fails with :class:`~txapns.core.errors.ChannelError` (``status`` and Apple's
``reason``, or no status when APNs did not answer) and raises, before sending anything, a
:class:`~txapns.core.errors.ValidationError` for a malformed channel id or storage policy.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING, TypeVar

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from .core.broadcast import (
    MANAGEMENT_HOSTS,
    Broadcast,
    ChannelInfo,
    StoragePolicy,
    all_channels_path,
    channel_create_body,
    channels_path,
    parse_channel_info,
    parse_channel_list,
    validate_bundle_id,
    validate_channel_id,
    validate_storage_policy,
)
from .core.errors import ChannelError, ProtocolError, RequestError
from .http2 import HTTP2Client, Response

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "MANAGEMENT_HOSTS",
    "Broadcast",
    "ChannelError",
    "ChannelInfo",
    "ChannelManager",
    "StoragePolicy",
]

log = Logger(namespace="txapns.broadcast")

_T = TypeVar("_T")


class ChannelManager:
    """Create, read, delete and list the broadcast channels of one app.

    :param client: an :class:`~txapns.http2.HTTP2Client` whose endpoint and ``authority`` are
        the management host of the app's environment (:data:`MANAGEMENT_HOSTS`), with the app's
        credential (token or certificate). ``min_connections=0`` suits it: a connection is
        opened on the first call and kept.
    :param bundle_id: the app; ``client.bundle_id`` by default.
    """

    def __init__(self, client: HTTP2Client, *, bundle_id: str | None = None) -> None:
        self.client = client
        self.bundle_id = validate_bundle_id(bundle_id or client.bundle_id)
        self._channels_path = channels_path(self.bundle_id).decode("ascii")
        self._all_channels_path = all_channels_path(self.bundle_id).decode("ascii")

    # --- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start the client (connections are opened when needed)."""
        self.client.start()

    def stop(self, timeout: float = 10.0) -> Deferred[None]:
        """Stop the client (see :meth:`HTTP2Client.stop <txapns.http2.HTTP2Client.stop>`)."""
        return self.client.stop(timeout)

    # --- the API ---------------------------------------------------------------------------

    def create(self, storage_policy: int) -> Deferred[str]:
        """Create a channel; fires with its id (``apns-channel-id``).

        ``storage_policy`` is a :class:`~txapns.core.broadcast.StoragePolicy` (0: no storage,
        broadcasts to it must have expiration 0; 1: the most recent message is stored). A
        create whose outcome is unknown is not re-sent (it could make two channels): it fails
        with ``ChannelError(unknown=True)``.
        """
        policy = validate_storage_policy(storage_policy)
        d = self.client.request(
            "POST",
            self._channels_path,
            headers=(("content-type", "application/json"),),
            body=channel_create_body(policy),
        )

        def created(response: Response) -> str:
            channel_id = response.header("apns-channel-id")
            if not channel_id:
                raise ChannelError(
                    f"create channel for {self.bundle_id}: the answer ({response.status}) "
                    "has no apns-channel-id",
                    status=response.status,
                )
            log.info(
                "{name}: created broadcast channel {channel} (message storage policy {policy})",
                name=self.client.name,
                channel=channel_id,
                policy=int(policy),
            )
            return channel_id

        return self._call(d, "create channel", None, created)

    def get(self, channel_id: str) -> Deferred[ChannelInfo]:
        """Read a channel's configuration."""
        validate_channel_id(channel_id)
        d = self.client.request(
            "GET", self._channels_path, headers=(("apns-channel-id", channel_id),)
        )

        def read(response: Response) -> ChannelInfo:
            return parse_channel_info(channel_id, response.body)

        return self._call(d, "read channel", channel_id, read)

    def delete(self, channel_id: str) -> Deferred[None]:
        """Delete a channel."""
        validate_channel_id(channel_id)
        d = self.client.request(
            "DELETE", self._channels_path, headers=(("apns-channel-id", channel_id),)
        )

        def deleted(response: Response) -> None:
            log.info(
                "{name}: deleted broadcast channel {channel}",
                name=self.client.name,
                channel=channel_id,
            )

        return self._call(d, "delete channel", channel_id, deleted)

    def list(self) -> Deferred[builtins.list[str]]:
        """The ids of every channel of the app (in APNs' order)."""
        d = self.client.request("GET", self._all_channels_path)

        def listed(response: Response) -> builtins.list[str]:
            return parse_channel_list(response.body)

        return self._call(d, "list channels", None, listed)

    # --- helpers ---------------------------------------------------------------------------

    def _call(
        self,
        d: Deferred[Response],
        what: str,
        channel_id: str | None,
        on_success: Callable[[Response], _T],
    ) -> Deferred[_T]:
        """A 2xx answer goes to ``on_success``; anything else becomes a ChannelError."""

        def answered(response: Response) -> _T:
            if not response.ok:
                reason = response.reason
                raise ChannelError(
                    f"{what}{_about(channel_id)}: APNs answered {response.status} "
                    f"{reason or '(no reason)'}",
                    status=response.status,
                    reason=reason,
                    channel_id=channel_id,
                )
            try:
                return on_success(response)
            except ProtocolError as e:
                raise ChannelError(
                    f"{what}{_about(channel_id)}: {e}",
                    status=response.status,
                    channel_id=channel_id,
                ) from e

        def failed(failure: Failure) -> _T:
            error = failure.value
            if isinstance(error, RequestError):
                raise ChannelError(
                    f"{what}{_about(channel_id)}: {error}",
                    status=error.status,
                    reason=error.reason,
                    local=error.local,
                    unknown=error.unknown,
                    channel_id=channel_id,
                ) from error
            failure.raiseException()
            raise AssertionError("unreachable")  # pragma: no cover

        return d.addCallbacks(answered, failed)


def _about(channel_id: str | None) -> str:
    return f" {channel_id}" if channel_id is not None else ""
