"""``twistd apns``: options and service construction (the reactor is imported lazily)."""

from __future__ import annotations

from twisted.application.service import IService, MultiService
from twisted.python import usage


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = "Run the txapns push service."
    optFlags = [["fake", None, "Run against an embedded fake APNs in this process."]]
    optParameters = [["demo", None, None, "Send N demo notifications, print outcomes, stop.", int]]


def makeService(options: Options) -> IService:
    return MultiService()
