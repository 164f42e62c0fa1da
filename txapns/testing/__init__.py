"""Helpers for tests, fakes and demos: throwaway TLS material, fake APNs servers and the like.

Nothing in this package is meant for production: the keys it makes are throwaway and the
servers it runs are fakes.
"""

__all__: list[str] = []
