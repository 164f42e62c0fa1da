"""``python -m txapns.testing http2`` as a tool for users' own tests: stable ids across
restarts, existing CA/server certificate/token keys, the port on stdout's first line, topics
checked against the key's team (subprocesses, real TLS on loopback)."""

from __future__ import annotations

import json
import os
import tempfile

from twisted.trial.unittest import TestCase

from txapns.testing.pki import make_test_pki

from .helpers_process import TOKEN, FakeProcess, run


def write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


class FakeToolTests(TestCase):
    def test_pki_dir_is_reused_so_ids_and_ca_stay(self) -> None:
        first = FakeProcess(self)
        with open(os.path.join(first.pki, "ca.pem"), "rb") as f:
            ca = f.read()
        first.stop()
        again = FakeProcess(self, pki=first.pki)
        self.assertEqual(again.token, first.token)
        with open(os.path.join(first.pki, "ca.pem"), "rb") as f:
            self.assertEqual(f.read(), ca)
        # The reused PKI works end to end (token key and CA as written the first time).
        result = run("send", *again.one_off(), TOKEN, "--alert", "hi")
        self.assertEqual(result.returncode, 0, result.stderr)
        again.stop()
        fresh = FakeProcess(self, "--new-pki", pki=first.pki)
        self.assertNotEqual(fresh.token["key_id"], first.token["key_id"])

    def test_port_is_the_first_line_even_with_verbose(self) -> None:
        fake = FakeProcess(self, "--verbose")  # fails unless stdout's first line is the port
        result = run("send", *fake.one_off(), TOKEN, "--alert", "hi")
        self.assertEqual(result.returncode, 0, result.stderr)
        fake.stop()
        self.assertIn("connection 1 made", fake.stderr)

    def test_existing_ca_and_token_key(self) -> None:
        mine = make_test_pki("com.example.mine")  # the user's own CA and .p8 key
        directory = tempfile.mkdtemp()
        ca = write(directory, "ca.pem", mine.ca_cert)
        ca_key = write(directory, "ca-key.pem", mine.ca_key)
        p8 = write(directory, "AuthKey_MYKEY00001.p8", mine.token_key_p8)
        fake = FakeProcess(
            self,
            *("--ca", ca, "--ca-key", ca_key, "--token-key", f"MYKEY00001={p8}"),
            *("--team-id", "MYTEAM0001", "--topic", "com.example.mine"),
        )
        flags = {"key-file": p8, "key-id": "MYKEY00001", "team-id": "MYTEAM0001", "ca-file": ca}
        result = run("send", *fake.one_off(**flags), TOKEN, "--alert", "hi", "--json")
        self.assertEqual(result.returncode, 0, result.stderr)
        self.assertEqual(json.loads(result.stdout)["outcome"], "accepted")
        # A voip push to the same app: suffixed topics belong to the app.
        result = run(
            "send", *fake.one_off(**flags), TOKEN, "--push-type", "voip", "--payload", '{"call":1}'
        )
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        # Another team's app: refused, as Apple does.
        other = fake.one_off(**flags, **{"bundle-id": "com.example.app"})
        result = run("send", *other, TOKEN, "--alert", "hi", "--json")
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(json.loads(result.stdout)["reason"], "TopicDisallowed")

    def test_existing_server_certificate(self) -> None:
        mine = make_test_pki("com.example.mine")
        directory = tempfile.mkdtemp()
        ca = write(directory, "ca.pem", mine.ca_cert)
        chain = write(directory, "server.pem", mine.server_cert + mine.server_key)
        fake = FakeProcess(self, "--server-cert", chain, "--ca", ca)
        result = run("send", *fake.one_off(**{"ca-file": ca}), TOKEN, "--alert", "hi")
        self.assertEqual(result.returncode, 0, result.stderr)
        # Certificate auth is checked against --ca: the fake's own client certificate is not
        # from it (TLS refuses it), the user's is.
        cert_flags = fake.one_off(**{"ca-file": ca, "key-file": "", "key-id": "", "team-id": ""})
        cert = write(directory, "client.pem", mine.client_cert)
        key = write(directory, "client-key.pem", mine.client_key)
        cert_flags = [*cert_flags[:2], "--bundle-id", "com.example.mine", *cert_flags[2:]]
        result = run("send", *cert_flags, "--cert-file", cert, "--cert-key", key, TOKEN)
        self.assertIn("accepted", result.stdout, result.stderr)
