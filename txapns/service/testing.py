"""The service's tests' name for the :class:`~txapns.interfaces.Sender` test double, which
lives with the other fakes in :mod:`txapns.testing.sender`."""

from ..testing.sender import FakeSender, ReportingFakeSender, accept

__all__ = ["FakeSender", "ReportingFakeSender", "accept"]
