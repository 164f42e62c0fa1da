"""``TXAPNS_…`` environment variables over (or instead of) the TOML file (issue 12, item 7)."""

from __future__ import annotations

import os
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

from txapns.service.config import ConfigError, TokenCredentials, load_config, parse_config
from txapns.service.environ import apply_environment, defines_apps, env_name

from .helpers import temp_dir
from .helpers_service import KEY_ID, NOW, TEAM_ID, write_p8

FILE = f"""
api_key_file = "api.key"
drain_timeout = 10

[[app]]
name = "my-shop"
bundle_id = "com.example.shop"
key_file = "AuthKey_{KEY_ID}.p8"
key_id = "{KEY_ID}"
team_id = "{TEAM_ID}"
"""


class EnvironmentTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = temp_dir(self).resolve()
        write_p8(self.dir / f"AuthKey_{KEY_ID}.p8")
        (self.dir / "api.key").write_text("k" * 32 + "\n")
        self.path = self.dir / "apns.toml"
        self.path.write_text(FILE)

    def load(self, environ: dict[str, str]):  # type: ignore[no-untyped-def]
        return load_config(self.path, now=NOW, environ=environ)

    def test_service_settings_override_the_file(self) -> None:
        (self.dir / "other.key").write_text("o" * 32)
        config = self.load(
            {
                "TXAPNS_DRAIN_TIMEOUT": "4.5",
                "TXAPNS_LISTEN": "tcp:9000:interface=127.0.0.1, unix:/run/txapns.sock",
                "TXAPNS_API_KEY_FILE": str(self.dir / "other.key"),
                "TXAPNS_MAX_RECIPIENTS": "12",
                "HOME": "/root",  # not ours: ignored
            }
        )
        self.assertEqual(config.drain_timeout, 4.5)
        self.assertEqual(config.listen, ("tcp:9000:interface=127.0.0.1", "unix:/run/txapns.sock"))
        self.assertEqual(config.api_key(), b"o" * 32)
        self.assertEqual(config.max_recipients, 12)

    def test_without_environ_the_file_alone(self) -> None:
        os.environ["TXAPNS_DRAIN_TIMEOUT"] = "3"
        self.addCleanup(os.environ.pop, "TXAPNS_DRAIN_TIMEOUT")
        self.assertEqual(load_config(self.path, now=NOW).drain_timeout, 10.0)

    def test_app_key_by_normalised_name(self) -> None:
        self.assertEqual(env_name("my-shop"), "MY_SHOP")
        config = self.load({"TXAPNS_APP_MY_SHOP_ENVIRONMENT": "sandbox"})
        self.assertEqual(config.app("my-shop").environment, "sandbox")

    def test_secret_from_file(self) -> None:
        secret = self.dir / "team-id"
        secret.write_text(TEAM_ID + "\n")
        (self.dir / "proxy").write_text("http://u:p@proxy.example:3128\n")
        data = apply_environment(
            {"app": [{"name": "my-shop", "team_id": "WRONG"}]},
            {
                "TXAPNS_APP_MY_SHOP_TEAM_ID_FILE": str(secret),
                "TXAPNS_APP_MY_SHOP_PROXY_FILE": "proxy",  # relative to cwd
            },
            cwd=self.dir,
        )
        self.assertEqual(data["app"][0]["team_id"], TEAM_ID)
        self.assertEqual(data["app"][0]["proxy"], "http://u:p@proxy.example:3128")

    def test_apps_from_the_environment_alone(self) -> None:
        environ = {
            "TXAPNS_API_KEY_FILE": "api.key",
            "TXAPNS_APP_NEWS_BUNDLE_ID": "com.example.news",
            "TXAPNS_APP_NEWS_KEY_FILE": f"AuthKey_{KEY_ID}.p8",
            "TXAPNS_APP_NEWS_KEY_ID": KEY_ID,
            "TXAPNS_APP_NEWS_TEAM_ID": TEAM_ID,
            "TXAPNS_APP_NEWS_PORT": "2197",
        }
        self.assertTrue(defines_apps(environ))
        self.assertFalse(defines_apps({"TXAPNS_LISTEN": "tcp:1"}))
        config = parse_config(
            apply_environment({}, environ, cwd=self.dir), base_dir=self.dir, now=NOW
        )
        (app,) = config.apps
        self.assertEqual((app.name, app.bundle_id, app.port), ("news", "com.example.news", 2197))
        self.assertEqual(
            app.credentials,
            TokenCredentials(self.dir / f"AuthKey_{KEY_ID}.p8", KEY_ID, TEAM_ID),
        )
        self.assertEqual(config.api_key_file, Path(self.dir / "api.key"))

    def test_unknown_variable_is_refused(self) -> None:
        e = self.assertRaises(ConfigError, self.load, {"TXAPNS_DRAIN_TIMOUT": "3"})
        self.assertIn("unknown environment variable TXAPNS_DRAIN_TIMOUT:", str(e))
        self.assertIn("TXAPNS_DRAIN_TIMEOUT,", str(e))  # the known names are listed
        e = self.assertRaises(ConfigError, self.load, {"TXAPNS_APP_MY_SHOP_COLOUR": "red"})
        self.assertIn("TXAPNS_APP_MY_SHOP_COLOUR", str(e))

    def test_wrong_type_names_the_variable(self) -> None:
        e = self.assertRaises(ConfigError, self.load, {"TXAPNS_MAX_RECIPIENTS": "many"})
        self.assertEqual(str(e), "TXAPNS_MAX_RECIPIENTS must be an integer, not 'many'")
        e = self.assertRaises(
            ConfigError, self.load, {"TXAPNS_APP_MY_SHOP_KEY_ID_FILE": "/no/such/file"}
        )
        self.assertIn("TXAPNS_APP_MY_SHOP_KEY_ID_FILE: cannot read '/no/such/file'", str(e))

    def test_checks_still_apply(self) -> None:
        e = self.assertRaises(
            ConfigError,
            self.load,
            {"TXAPNS_APP_MY_SHOP_KEY_ID": TEAM_ID, "TXAPNS_APP_MY_SHOP_TEAM_ID": KEY_ID},
        )
        self.assertIn("look swapped", str(e))
