"""Apple's hosts and ports, per protocol and environment: the one table the library's
endpoints (:mod:`txapns.endpoints`) and the service's configuration both read."""

from __future__ import annotations

__all__ = ["APNS_HOSTS", "FEEDBACK_HOSTS", "MANAGEMENT_HOSTS", "apns_host"]

#: ``(protocol, environment)`` → ``(host, port)`` of the provider API.
APNS_HOSTS: dict[tuple[str, str], tuple[str, int]] = {
    ("http2", "production"): ("api.push.apple.com", 443),
    ("http2", "sandbox"): ("api.sandbox.push.apple.com", 443),
    ("binary", "production"): ("gateway.push.apple.com", 2195),
    ("binary", "sandbox"): ("gateway.sandbox.push.apple.com", 2195),
}
#: Apple's feedback service of the binary protocol, per environment.
FEEDBACK_HOSTS: dict[str, tuple[str, int]] = {
    "production": ("feedback.push.apple.com", 2196),
    "sandbox": ("feedback.sandbox.push.apple.com", 2196),
}
#: The broadcast channel-management API (iOS 18), per environment (Apple's ports).
MANAGEMENT_HOSTS: dict[str, tuple[str, int]] = {
    "production": ("api-manage-broadcast.push.apple.com", 2196),
    "sandbox": ("api-manage-broadcast.sandbox.push.apple.com", 2195),
}


def apns_host(service: str = "http2", environment: str = "production") -> tuple[str, int]:
    """``(host, port)`` of one of Apple's services in ``environment`` (``"production"`` or
    ``"sandbox"``): ``"http2"`` (the provider API), ``"binary"`` (the legacy gateway),
    ``"feedback"`` (the legacy feedback service) or ``"manage"`` (broadcast channels)."""
    if service == "feedback":
        table: dict[str, tuple[str, int]] = FEEDBACK_HOSTS
    elif service == "manage":
        table = MANAGEMENT_HOSTS
    else:
        table = {env: APNS_HOSTS[(proto, env)] for proto, env in APNS_HOSTS if proto == service}
    try:
        return table[environment]
    except KeyError:
        raise ValueError(
            f"no APNs host for service {service!r}, environment {environment!r}"
        ) from None
