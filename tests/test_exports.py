"""The public face: what ``txapns`` exports, ``__all__`` in every public module, old names.

The list of exports is written out here on purpose: adding or removing a public name must
be a deliberate change to this file too.
"""

from __future__ import annotations

import importlib
import pkgutil
import subprocess
import sys
import warnings

from twisted.trial.unittest import SynchronousTestCase

import txapns

#: Every name ``txapns`` exports, and the module it comes from.
EXPORTS = {
    "APNsError": "txapns.core.errors",
    "Alert": "txapns.core.payload",
    "Backoff": "txapns.core.backoff",
    "BinaryClient": "txapns.binary",
    "ChannelConfig": "txapns.core.binary_channel",
    "ChannelError": "txapns.core.errors",
    "CircuitOpenError": "txapns.core.errors",
    "ClientCertificate": "txapns.credentials",
    "ClientStoppedError": "txapns.core.errors",
    "ConnectionFailedError": "txapns.core.errors",
    "CredentialError": "txapns.core.errors",
    "CriticalSound": "txapns.core.payload",
    "FeedbackClient": "txapns.feedback",
    "FeedbackPoller": "txapns.feedback",
    "HTTP2Client": "txapns.http2",
    "InvalidChannelIdError": "txapns.core.errors",
    "InvalidFieldError": "txapns.core.errors",
    "InvalidPriorityError": "txapns.core.errors",
    "InvalidTokenError": "txapns.core.errors",
    "MissingTopicError": "txapns.core.errors",
    "Notification": "txapns.core.notification",
    "Outcome": "txapns.core.result",
    "PayloadError": "txapns.core.errors",
    "PayloadTooLargeError": "txapns.core.errors",
    "ProtocolError": "txapns.core.errors",
    "ProviderToken": "txapns.core.jwt",
    "PushType": "txapns.core.notification",
    "QueueFullError": "txapns.core.errors",
    "RequestError": "txapns.core.errors",
    "Result": "txapns.core.result",
    "RetryPolicy": "txapns.core.http2_policy",
    "TLSFailureError": "txapns.core.errors",
    "UnknownPolicy": "txapns.core.result",
    "ValidationError": "txapns.core.errors",
    "__version__": "txapns",
    "build_payload": "txapns.core.payload",
    "client_tls_options": "txapns.credentials",
    "encode_payload": "txapns.core.payload",
    "load_signing_key": "txapns.core.jwt",
}

#: Modules that are not the library's public API: the application and the entry points.
NOT_PUBLIC = (
    "txapns.service",
    "txapns.tap",
    "txapns.cli",
    "txapns.demo",
    "txapns.testing.__main__",
)


def public_modules() -> list[str]:
    names = ["txapns"]
    for info in pkgutil.walk_packages(txapns.__path__, "txapns."):
        parts = info.name.split(".")
        if any(p.startswith("_") for p in parts) or info.name.startswith(NOT_PUBLIC):
            continue
        names.append(info.name)
    return names


class ExportTests(SynchronousTestCase):
    def test_exact_list(self) -> None:
        self.assertEqual(sorted(txapns.__all__), sorted(EXPORTS))
        self.assertEqual(len(txapns.__all__), len(set(txapns.__all__)))

    def test_same_objects_as_their_home(self) -> None:
        namespace: dict[str, object] = {}
        exec("from txapns import *", namespace)
        for name, home in EXPORTS.items():
            with self.subTest(name=name):
                value = getattr(importlib.import_module(home), name)
                self.assertIs(getattr(txapns, name), value)
                if name != "__version__":  # import * leaves dunder names out
                    self.assertIs(namespace[name], value)

    def test_unknown_name(self) -> None:
        self.assertRaises(AttributeError, getattr, txapns, "NoSuchThing")

    def test_core_stays_free_of_twisted(self) -> None:
        """The Twisted names are imported on first use: the sans-IO core (and the package's
        own names from it) can be used without importing Twisted."""
        probe = (
            "import sys, txapns, txapns.core; from txapns import Notification, Result; "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'twisted'], 'twisted'; "
            "txapns.HTTP2Client; assert 'twisted' in sys.modules"
        )
        subprocess.run([sys.executable, "-c", probe], check=True)


class AllTests(SynchronousTestCase):
    def test_every_public_module_has_all(self) -> None:
        modules = public_modules()
        self.assertIn("txapns.core.http2.frames", modules)
        self.assertIn("txapns.testing.pki", modules)
        for name in modules:
            with self.subTest(module=name):
                module = importlib.import_module(name)
                names = module.__dict__.get("__all__")
                self.assertIsNotNone(names, f"{name} has no __all__")
                self.assertEqual(len(names), len(set(names)), name)
                for item in names:
                    self.assertTrue(hasattr(module, item), f"{name}.{item}")

    def test_no_private_names_in_all(self) -> None:
        for name in public_modules():
            with self.subTest(module=name):
                names = importlib.import_module(name).__all__
                self.assertEqual([n for n in names if n.startswith("_") and n != "__version__"], [])


class RenamedTests(SynchronousTestCase):
    """One spelling, ``APNs``; the old documented names still work, and warn."""

    OLD = {
        ("txapns.binary", "APNSProtocol"): "APNsProtocol",
        ("txapns.binary", "APNSClientFactory"): "APNsClientFactory",
        ("txapns.core.http2_policy", "ApnsResponse"): "APNsResponse",
    }

    def test_old_names_warn_and_give_the_new_object(self) -> None:
        for (module_name, old), new in self.OLD.items():
            with self.subTest(old=old):
                module = importlib.import_module(module_name)
                self.assertNotIn(old, module.__all__)
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    value = getattr(module, old)
                self.assertIs(value, getattr(module, new))
                self.assertEqual([w.category for w in caught], [DeprecationWarning])
                self.assertIn(f"use {module_name}.{new}", str(caught[0].message))
                self.assertEqual(caught[0].filename, __file__)  # blames the caller

    def test_from_import_of_an_old_name(self) -> None:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            from txapns.binary import APNSProtocol, APNsProtocol
        self.assertIs(APNSProtocol, APNsProtocol)
        self.assertEqual(len(caught), 1)

    def test_unknown_names_still_fail(self) -> None:
        import txapns.binary

        self.assertRaises(AttributeError, getattr, txapns.binary, "APNSNoSuchThing")

    def test_no_class_spells_apns_otherwise(self) -> None:
        offenders = []
        for name in public_modules():
            module = importlib.import_module(name)
            for item in module.__all__:
                if ("APNS" in item and not item.isupper()) or "Apns" in item:
                    offenders.append(f"{name}.{item}")
        self.assertEqual(offenders, [])


class ConfigNamesTests(SynchronousTestCase):
    def test_wire_protocol_does_not_shadow_typing_protocol(self) -> None:
        from typing import get_args

        from txapns.service import config

        self.assertFalse(hasattr(config, "Protocol"))
        self.assertEqual(get_args(config.WireProtocol), ("http2", "binary"))
