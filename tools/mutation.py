"""Mutation testing of txapns' sans-IO core and the two clients with mutmut.

    python tools/mutation.py                  # every module of txapns/core, one by one
    python tools/mutation.py core/jwt.py      # one module (path under txapns/)
    python tools/mutation.py --clients        # http2.py, _http2_connection.py, binary.py (slow)
    python tools/mutation.py http2.py --only '*_requeue*'   # a sample: these functions' mutants
    python tools/mutation.py --list           # the modules and the tests run against each

Each module is mutated in its own scratch copy of the project (``build/mutation/<module>``), with
mutmut's test selection restricted to the test modules that are about it (``TARGETS``): mutmut
then runs, for each mutant, only those of these tests that execute the mutated function. One
worker (``--max-children 1``) under ``nice -n 19``: the machine is shared. A scratch copy is
kept, so a re-run only tests mutants of functions that changed; ``--retest`` also tests the
earlier survivors again (after adding tests); ``--fresh`` starts over.

Prints the kill rate per module: killed / (mutants - equivalent), where ``EQUIVALENT`` lists
the surviving mutants judged equivalent (each with why), and lists every other survivor;
``cd build/mutation/<module> && mutmut show <name>`` shows one. Exits 1 when a core module is
under ``--min`` percent (95 by default).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUILD = ROOT / "build" / "mutation"

_H2 = ["test_http2_connection.py", "test_http2_connection_edges.py", "test_http2_conformance.py"]

#: Module (under txapns/) → the test modules that test it. Unit tests only: in memory, with a
#: Clock; the integration tests over real sockets are too slow to run per mutant.
TARGETS: dict[str, list[str]] = {
    "core/backoff.py": ["test_http2_policy.py", "test_binary_client.py"],
    "core/binary.py": ["test_binary_codec.py", "test_binary_channel.py"],
    "core/breaker.py": ["test_core_breaker.py"],
    "core/_deprecate.py": ["test_exports.py::RenamedTests"],
    "core/hosts.py": ["test_endpoints.py"],
    "core/queue_time.py": ["test_http2_client.py", "test_binary_client.py"],
    "core/token_evidence.py": ["test_token_evidence.py", "test_environment_probe.py::VerdictTests"],
    "core/binary_channel.py": [
        "test_binary_channel.py",
        "test_binary_channel_edges.py",
        "test_binary_client.py",
    ],
    "core/broadcast.py": ["test_broadcast.py", "test_broadcast_edges.py"],
    "core/counters.py": ["test_result_counters.py", "test_binary_channel.py"],
    "core/errors.py": ["test_notification.py", "test_payload.py", "test_result_counters.py"],
    "core/http2_policy.py": ["test_http2_policy.py"],
    "core/jwt.py": ["test_jwt.py", "test_jwt_edges.py"],
    "core/notification.py": ["test_notification.py"],
    "core/payload.py": ["test_payload.py", "test_notification.py"],
    "core/proxy.py": [
        "test_proxy.py",
        "test_proxy_edges.py",
        *(f"test_proxy_environment.py::{c}Tests" for c in ("NoProxy", "Loopback", "Environment")),
    ],
    "core/result.py": ["test_result_counters.py"],
    "core/http2/connection.py": _H2,
    "core/http2/errors.py": _H2,
    "core/http2/events.py": _H2,
    "core/http2/frames.py": _H2,
    "core/http2/headers.py": [*_H2, "test_http2_headers_edges.py"],
    "core/http2/decoder.py": ["test_http2_decoder.py"],
    # test_broadcast: broadcasts and management requests are the clients' other path.
    "http2.py": [
        "test_http2_client.py",
        "test_http2_client_edges.py",
        "test_broadcast.py",
        "test_hold_when_unavailable.py",
    ],
    "_http2_connection.py": [
        "test_http2_connection_owner.py",
        "test_http2_client.py",
        "test_http2_client_edges.py",
        "test_broadcast.py",
    ],
    "binary.py": ["test_binary_client.py", "test_binary_iosim.py", "test_hold_when_unavailable.py"],
}
CLIENTS = ("http2.py", "_http2_connection.py", "binary.py")

#: Tests left out of every mutation run: slow (tens of seconds, run for every mutant the
#: faster tests let through) and exercising nothing the faster tests of the same code don't.
DESELECT = [
    # 5000 requests through a 64 KiB window (27 s): the window edges have their own tests.
    "tests/test_http2_conformance.py::FlowControlAndSettings::"
    "test_5000_requests_of_4k_through_a_64k_connection_window",
    # Checks that a deprecation warning blames the caller (stacklevel): mutmut's trampoline
    # adds a frame, so under mutmut the warning points into mutmut and the test cannot pass.
    "tests/test_http2_client.py::TokenTests::"
    "test_the_old_token_tuple_still_works_with_a_deprecation_warning",
]

#: Surviving mutants judged equivalent (no behaviour can tell them from the original), by
#: mutmut's name, with why. Reviewed by hand: see docs/development.rst.
_BC = "txapns.core.binary_channel.xǁBinaryChannelǁ"
_SENTINEL_UNREAD = "a sentinel's notification, submitted_at and writes are never read"
_SENTINELS_RESET = "_sentinels is set to 0 at the end of _on_error (the window is cleared)"
_AFTER_ERROR = (
    "after an error response the window is empty (take_frames and take_sentinel refuse while "
    "error is set), so going on resolves nothing either"
)
_RESET_ON_CONNECT = (
    "error/broken while disconnected: nothing reads them before connection_made resets them"
)
_CODEC = "codec names are case-insensitive"
_KEY_NAME = "no key class name has surrounding white space or a trailing '_'"
_BIG = "int.to_bytes/from_bytes default to 'big' (Python >= 3.11)"
_BEFORE_FIRST = "read only once a token exists: every reader checks _token first"
_ONE_BYTE = "encode_integer(n, 7) is the one byte _LEN[n] for n < 127"
_TEMPLATE_CODECS = (21, 26, 31, 39, 46, 60, 64, 74)
_REASON = "every status line sets _reason before _end_of_head reads it"
_URLSPLIT_PORT = "urlsplit's port refuses 65536 first ('the port must be within 1..65535')"
_STRICT = "zip of two tables of 257 entries: strict or not, the same pairs"
_COMPLETE = "the Huffman code is complete: no child is 0 (the root is nobody's child)"
_FAST_PATH = "the inline static-table lookup is a fast path: _field gives the same field"
_C = "H2ClientConnectionǁ"
_TRUTH = "None for False/0/b'': the value is only ever tested for truth"
_CONT_SET = "every HEADERS without END_HEADERS sets it before a CONTINUATION reads it"
_EXACT_FIT = (
    "a body that exactly fits goes through _send_pending instead: the same one frame, flags "
    "and window accounting"
)
_WINDOW_0 = "_send_pending with a connection window of 0 sends nothing and changes nothing"
_DROPPED = (
    "pending None for b'' on a stream already dropped: only _flush reads it, and skips a falsy one"
)
_DROPPED_AT = [
    ("reset_stream", 9),
    ("_end_of_response", 22),
    ("_stream_error", 1),
    ("_on_rst_stream", 28),
    ("_on_goaway", 30),
]
_SHORTER = (
    "a length read too short (or no wait) only hands an incomplete frame to _process, which "
    "parses the real header, stops and buffers it again"
)
_DEAD_INPUT = "after _die nothing is read: receive_data returns at once, the send queue is empty"
_REASON_BYTES = (
    "reasons are our literals and repr()s, never lone surrogates: 'strict' and 'replace' "
    "give the same bytes, and codec names are case-insensitive"
)
EQUIVALENT: dict[str, str] = {
    f"{_BC}__init____mutmut_15": "connection_made replaces the decoder before any read",
    f"{_BC}take_sentinel__mutmut_3": "after an error response the window is empty: b'' anyway",
    f"{_BC}take_sentinel__mutmut_4": "disconnected implies an empty window: returns b'' anyway",
    f"{_BC}take_sentinel__mutmut_9": _SENTINEL_UNREAD,
    f"{_BC}take_sentinel__mutmut_10": _SENTINEL_UNREAD,
    f"{_BC}take_sentinel__mutmut_30": _SENTINEL_UNREAD,
    f"{_BC}take_sentinel__mutmut_31": _SENTINEL_UNREAD,
    f"{_BC}take_sentinel__mutmut_18": "dead branch: the method returned early on an empty window",
    f"{_BC}take_sentinel__mutmut_35": "= 1 and += 1 agree: reached only when _sentinels is 0",
    f"{_BC}_on_error__mutmut_23": _SENTINELS_RESET,
    f"{_BC}_on_error__mutmut_24": _SENTINELS_RESET,
    f"{_BC}_on_error__mutmut_25": _SENTINELS_RESET,
    f"{_BC}_on_error__mutmut_43": _SENTINELS_RESET,
    f"{_BC}_on_error__mutmut_44": _SENTINELS_RESET,
    f"{_BC}_on_error__mutmut_45": _SENTINELS_RESET,
    f"{_BC}data_received__mutmut_7": "ErrorResponseDecoder raises only DecodeError",
    f"{_BC}connection_lost__mutmut_6": _AFTER_ERROR,
    f"{_BC}connection_lost__mutmut_7": _RESET_ON_CONNECT,
    f"{_BC}connection_lost__mutmut_10": _RESET_ON_CONNECT,
    f"{_BC}connection_lost__mutmut_19": _RESET_ON_CONNECT,
    "txapns.core.counters.xǁCountersǁnote_window__mutmut_1": ">= sets the value it already has",
    "txapns.core.http2_policy.x_classify__mutmut_8": "200 is in _BY_STATUS, decided before",
    "txapns.core.http2_policy.x_classify__mutmut_9": "200 is in _BY_STATUS, decided before",
    "txapns.core.http2_policy.x_classify__mutmut_12": "500 is in _BY_STATUS, decided before",
    "txapns.core.http2_policy.x_classify__mutmut_13": "500 is in _BY_STATUS, decided before",
    "txapns.core.http2_policy.x__text__mutmut_7": "codec names are case-insensitive",
    "txapns.core.http2_policy.x_parse_response__mutmut_17": "neither '' nor None is a dict",
    "txapns.core.http2_policy.xǁRetryPolicyǁdecide_response__mutmut_7": (
        "decide() finishes ACCEPTED and REJECTED the same way"
    ),
    "txapns.core.notification.xǁNotificationǁaps__mutmut_3": "a None default ends as {} too",
    "txapns.core.notification.xǁNotificationǁaps__mutmut_5": "a None default ends as {} too",
    "txapns.core.notification.x_validate_http2__mutmut_14": (
        "a JSON object cannot be only X, braces and whitespace: X needs quotes"
    ),
    **{
        f"txapns.core.payload.x_encode_payload__mutmut_{n}": why
        for n, why in [
            (6, "codec names are case-insensitive"),
            (17, "codec names are case-insensitive"),
            (43, "codec names are case-insensitive"),
            (13, "a str encoded to UTF-8 and decoded again is the same str"),
            (30, "ensure_ascii=None is falsy like False"),
            (31, "allow_nan=None is falsy like False"),
        ]
    },
    **{
        f"txapns.core.jwt.{name}": why
        for name, why in [
            ("x__b64url__mutmut_7", _CODEC),
            ("x__json_segment__mutmut_10", _CODEC),
            ("x_sign_provider_token__mutmut_34", _CODEC),
            ("x_verify_provider_token__mutmut_5", _CODEC),
            ("x_verify_provider_token__mutmut_144", _CODEC),
            ("x_parse_http_date__mutmut_6", _CODEC),
            ("x__b64url_decode__mutmut_8", "its callers replace the ValueError with their own"),
            ("x__b64url_decode__mutmut_9", "its callers replace the ValueError with their own"),
            ("x__b64url_decode__mutmut_10", "its callers replace the ValueError with their own"),
            ("x__b64url_decode__mutmut_16", "'===' for '=': the decoder ignores extra padding"),
            ("x_clock_skew_warning__mutmut_17", "skew 0 is within any tolerance >= 0: no warning"),
            ("x_load_signing_key__mutmut_26", _KEY_NAME),
            ("x_load_signing_key__mutmut_27", _KEY_NAME),
            ("x_sign_provider_token__mutmut_43", _BIG),
            ("x_sign_provider_token__mutmut_49", _BIG),
            ("x_verify_provider_token__mutmut_125", _BIG),
            ("x_verify_provider_token__mutmut_131", _BIG),
            ("x_validate_ids__mutmut_30", "rsplit('/') has the same last part"),
            ("x_validate_ids__mutmut_39", "rsplit('/', 2) has the same last part"),
            ("xǁProviderTokenSourceǁ__init____mutmut_28", _BEFORE_FIRST),
            ("xǁProviderTokenSourceǁ__init____mutmut_29", _BEFORE_FIRST),
            ("xǁProviderTokenSourceǁ__init____mutmut_30", _BEFORE_FIRST),
            ("xǁProviderTokenSourceǁ__init____mutmut_31", _BEFORE_FIRST),
        ]
    },
    **{
        f"txapns.core.http2.headers.{name}": why
        for name, why in [
            *[(n, _CODEC) for n in ("x__as_bytes__mutmut_5", "x_device_path__mutmut_6")],
            *[(f"xǁHeaderBlockTemplateǁ__init____mutmut_{n}", _CODEC) for n in _TEMPLATE_CODECS],
            ("xǁHeaderBlockTemplateǁencode__mutmut_27", _CODEC),
            ("xǁHeaderBlockTemplateǁencode__mutmut_56", _CODEC),
            ("x_literal_name_prefix__mutmut_9", "first_byte defaults to 0"),
            ("x_encode_string__mutmut_3", _ONE_BYTE),
            ("xǁHeaderBlockTemplateǁencode__mutmut_12", _ONE_BYTE),
            ("xǁHeaderBlockTemplateǁencode__mutmut_34", _ONE_BYTE),
            ("xǁHeaderBlockTemplateǁencode__mutmut_63", _ONE_BYTE),
            ("x_encode_field__mutmut_10", "static indexes (<= 61) fit a 7-bit prefix or 8"),
            ("x_encode_header_block__mutmut_2", "None is falsy like False"),
        ]
    },
    **{
        f"txapns.core.broadcast.{name}": why
        for name, why in [
            ("x_all_channels_path__mutmut_4", _CODEC),
            ("x_broadcast_path__mutmut_4", _CODEC),
            ("x_channels_path__mutmut_4", _CODEC),
            ("x_channel_create_body__mutmut_14", _CODEC),
            ("x_validate_channel_id__mutmut_25", _CODEC),
            ("x__json_object__mutmut_3", "neither '' nor None is a dict"),
        ]
    },
    **{
        f"txapns.core.proxy.{name}": why
        for name, why in [
            ("xǁProxyURLǁredacted__mutmut_9", "quote() never escapes letters: safe='XXXX' is ''"),
            ("xǁTunnelRefusedǁerror__mutmut_14", "header() compares names in lower case"),
            ("x_build_connect_request__mutmut_15", _CODEC),
            ("x__first_set__mutmut_4", "the name is unused when the value is empty"),
            ("x__mask__mutmut_35", "split(':')[0] is split(':', 1)[0]"),
            ("x__mask__mutmut_38", "split(':', 2)[0] is split(':', 1)[0]"),
            ("xǁEnvironmentProxyǁfrom_environ__mutmut_25", "URL schemes are case-insensitive"),
            ("xǁProxyCredentialsǁauthorization__mutmut_9", _CODEC),
            ("xǁTunnelRefusedǁerror__mutmut_15", "header() compares names in lower case"),
            *[(f"xǁConnectResponseParserǁ_line__mutmut_{n}", _CODEC) for n in (25, 42, 61, 66)],
            *[(f"xǁConnectResponseParserǁ__init____mutmut_{n}", _REASON) for n in (11, 12)],
            ("x__split_entry__mutmut_5", "rpartition differs only with two ']': no host has one"),
            ("x_no_proxy_matches__mutmut_12", "an empty entry matches nothing either way"),
            ("x_no_proxy_matches__mutmut_25", "strict=None is falsy like False"),
            *[(f"x_parse_proxy_url__mutmut_{n}", _URLSPLIT_PORT) for n in (49, 50)],
        ]
    },
    "txapns.core.breaker.xǁCircuitBreakerǁhalf_open__mutmut_3": (
        "'and' for the first 'or': not open implies half_open_at is None (only open() sets it)"
    ),
    **{
        f"txapns.core.http2.decoder.{name}": why
        for name, why in [
            *[(f"x__build_tree__mutmut_{n}", _STRICT) for n in (11, 14, 15)],
            ("x__build_tree__mutmut_27", "the loop breaks at i == 0: it never reaches -1"),
            ("x__integer__mutmut_29", "shift grows by 7: > 29 first holds at 35, as > 28 does"),
            *[(f"x__transition__mutmut_{n}", _COMPLETE) for n in (24, 25)],
            *[(f"xǁHeaderDecoderǁdecode__mutmut_{n}", _FAST_PATH) for n in (29, 33, 35)],
            ("xǁHeaderDecoderǁdecode__mutmut_104", "_evict(limit) at size == limit evicts nothing"),
        ]
    },
    **{
        f"txapns.core.http2.connection.xǁ{name}": why
        for name, why in [
            *[(f"_Streamǁ__init____mutmut_{n}", _TRUTH) for n in (10, 12, 14)],
            (
                "_Streamǁ__init____mutmut_17",
                "headers is set with the final status, before any read",
            ),
            *[(f"{_C}__init____mutmut_{n}", _TRUTH) for n in (76, 90, 93, 95)],
            *[(f"{_C}__init____mutmut_{n}", _CONT_SET) for n in (92, 94, 96)],
            *[(f"{_C}send_request__mutmut_{n}", _EXACT_FIT) for n in (76, 77, 78)],
            *[(f"{_C}send_request__mutmut_{n}", _WINDOW_0) for n in (102,)],
            *[(f"{_C}send_data__mutmut_{n}", _WINDOW_0) for n in (32,)],
            *[(f"{_C}_on_window_update__mutmut_{n}", _WINDOW_0) for n in (65,)],
            *[
                (
                    f"{_C}send_data__mutmut_{n}",
                    "_DATA is 0: 0<<8|0, 0<<8&0, 0>>8|0, 0<<9|0 are all 0",
                )
                for n in (23, 24, 26)
            ],
            *[(f"{_C}{f}__mutmut_{n}", _DROPPED) for f, n in _DROPPED_AT],
            *[(f"{_C}_send_pending__mutmut_{n}", _TRUTH) for n in (54,)],
            (
                f"{_C}_send_pending__mutmut_55",
                "local_closed is set next: a closed stream takes no data",
            ),
            *[(f"{_C}_flush__mutmut_{n}", _TRUTH) for n in (8, 13)],
            *[(f"{_C}receive_data__mutmut_{n}", _SHORTER) for n in (10, 12, 25)],
            *[(f"{_C}receive_data__mutmut_{n}", _DEAD_INPUT) for n in (34, 35)],
            *[
                (f"{_C}{f}__mutmut_{n}", _TRUTH)
                for f, n in [("_on_headers", 17), ("_on_continuation", 20), ("_on_settings", 29)]
            ],
            (
                f"{_C}_on_headers__mutmut_19",
                "neither flag: start 0, end len(payload), the block is the payload",
            ),
            (f"{_C}_on_continuation__mutmut_22", _CONT_SET),
            (f"{_C}_end_of_response__mutmut_3", "b''.join([]) is b''"),
            (
                f"{_C}_on_window_update__mutmut_64",
                "_send_pending with nothing pending changes nothing",
            ),
            (f"{_C}_on_settings__mutmut_63", "inside 'if delta:': delta is never 0 there"),
            (f"{_C}_on_goaway__mutmut_26", "an equal last-stream-id leaves the same value"),
            *[(f"{_C}_fail__mutmut_{n}", _REASON_BYTES) for n in (15, 17, 18, 19)],
            *[(f"{_C}_die__mutmut_{n}", _DEAD_INPUT) for n in (3, 4, 5, 6, 7)],
        ]
    },
    "txapns.core.binary.x_encode_simple__mutmut_9": (
        "command 0 can only fail on a length, explained before the struct error is used"
    ),
}

#: Surviving mutants that are not equivalent but left untested on purpose, with why. They
#: count against the score and are listed as "known gap".
_QUEUE_ORDER = (
    "a stream can end up twice in the send queue, or leave it early: only the queue position of "
    "more body given by send_data to a stream whose queued body already went out can change; "
    "the clients never call send_data (every body goes with send_request)"
)
KNOWN_GAPS: dict[str, str] = {
    f"txapns.core.http2.connection.xǁ{_C}{name}": _QUEUE_ORDER
    for name in (
        "send_request__mutmut_105",
        "send_request__mutmut_106",
        "send_data__mutmut_35",
        "send_data__mutmut_37",
        "send_data__mutmut_38",
        "_flush__mutmut_4",
        "_on_settings__mutmut_30",
        "_on_settings__mutmut_103",
    )
}

#: mutmut's exit codes (mutmut.stats.status_by_exit_code).
STATUS = {1: "killed", 3: "killed", 0: "survived", 5: "no tests", 33: "no tests", 34: "skipped"}
STATUS.update({36: "timeout", -24: "timeout", 24: "timeout", 152: "timeout", 255: "timeout"})
STATUS.update({37: "type check", -11: "segfault", -9: "segfault"})


def _config(module: str, tests: list[str]) -> str:
    if module.startswith("core/"):
        tests = [*tests, "test_core_edges.py"]
    selection = ", ".join(json.dumps(f"tests/{t}") for t in tests)
    deselect = "".join(f', "--deselect", {json.dumps(t)}' for t in DESELECT)
    return f"""
[tool.mutmut]
source_paths = ["txapns/"]
only_mutate = ["txapns/{module}"]
pytest_add_cli_args_test_selection = [{selection}]
pytest_add_cli_args = ["-p", "no:randomly", "-p", "no:cacheprovider", "-q"{deselect}]
use_git_change_detection = false
also_copy = ["conftest.py"]
"""


#: mutmut runs the tests many times in one process (and forks): hypothesis must not object to
#: that, and must draw the same examples every time, so that a verdict is reproducible. At most
#: MAX_EXAMPLES examples per property: each runs once per mutant the unit tests let through.
MAX_EXAMPLES = 50
CONFTEST = f"""\
from hypothesis import HealthCheck, settings

_init = settings.__init__
_SUPPRESS = [HealthCheck.differing_executors, HealthCheck.too_slow]


def _fewer_examples(self, parent=None, **kw):
    if kw.get("max_examples", 0) > {MAX_EXAMPLES}:
        kw["max_examples"] = {MAX_EXAMPLES}
    if "suppress_health_check" in kw:
        kw["suppress_health_check"] = [*kw["suppress_health_check"], *_SUPPRESS]
    _init(self, parent, **kw)


settings.__init__ = _fewer_examples

settings.register_profile(
    "mutation",
    max_examples={MAX_EXAMPLES},
    derandomize=True,
    database=None,
    suppress_health_check=_SUPPRESS,
)
settings.load_profile("mutation")
"""


def prepare(module: str, fresh: bool) -> Path:
    """A scratch copy of the project whose pyproject configures mutmut for ``module``."""
    work = BUILD / module.replace("/", "_").removesuffix(".py")
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    for name in ("txapns", "tests"):
        dest = work / name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(
            ROOT / name, dest, ignore=shutil.ignore_patterns("__pycache__", "_trial_temp*")
        )
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    (work / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (work / "pyproject.toml").write_text(
        pyproject + _config(module, TARGETS[module]), encoding="utf-8"
    )
    return work


def _meta(work: Path, module: str) -> dict[str, int | None]:
    path = work / "mutants" / "txapns" / f"{module}.meta"
    if not path.exists():
        return {}
    codes: dict[str, int | None] = json.loads(path.read_text())["exit_code_by_key"]
    return codes


def run(
    module: str, fresh: bool, retest: bool, only: list[str]
) -> tuple[Counter[str], list[str], float]:
    work = prepare(module, fresh)
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    mutmut = Path(sys.executable).with_name("mutmut")
    cmd = ["nice", "-n", "19", str(mutmut), "run", "--max-children", "1"]
    mutants = [f"txapns.{module.removesuffix('.py').replace('/', '.')}.{p}" for p in only]
    started = time.monotonic()
    log = work / "mutmut.log"
    with log.open("w") as out:
        code = subprocess.call(
            cmd + mutants, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT
        )
        # mutmut keeps earlier verdicts; after adding tests, test the survivors again.
        again = [
            n
            for n, c in _meta(work, module).items()
            if (c is None or STATUS.get(c) != "killed")
            and (not mutants or any(fnmatch.fnmatch(n, p) for p in mutants))
        ]
        if retest and again and code == 0:
            code = subprocess.call(
                cmd + again, cwd=work, env=env, stdout=out, stderr=subprocess.STDOUT
            )
    elapsed = time.monotonic() - started
    if code != 0:
        sys.exit(f"mutmut failed for {module} (exit {code}); see {log}")
    statuses: Counter[str] = Counter()
    survivors = []
    for name, exit_code in sorted(_meta(work, module).items()):
        if mutants and not any(fnmatch.fnmatch(name, p) for p in mutants):
            continue  # not in the sample
        status = STATUS.get(exit_code or 0, "suspicious") if exit_code is not None else "not run"
        if status in ("survived", "no tests") and name in EQUIVALENT:
            status = "equivalent"
        elif status in ("survived", "no tests") and name in KNOWN_GAPS:
            status = "known gap"
        statuses[status] += 1
        if status in ("survived", "no tests", "suspicious", "not run", "known gap"):
            survivors.append(f"{status}: {name}")
    return statuses, survivors, elapsed


def score(c: Counter[str]) -> float:
    total = sum(c.values()) - c["equivalent"]
    caught = c["killed"] + c["timeout"] + c["type check"] + c["segfault"]
    return 100.0 * caught / total if total else 100.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("modules", nargs="*", help="paths under txapns/, e.g. core/jwt.py")
    parser.add_argument("--clients", action="store_true", help="the clients' modules")
    parser.add_argument("--fresh", action="store_true", help="discard earlier results")
    parser.add_argument(
        "--retest", action="store_true", help="test earlier survivors again (after new tests)"
    )
    parser.add_argument("--list", action="store_true", help="show modules and their tests")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="GLOB",
        help="a sample: only mutants whose name (after the module's) matches, e.g. 'x_parse*'",
    )
    parser.add_argument("--min", type=float, default=95.0, help="required core score (%%)")
    args = parser.parse_args()
    if args.list:
        for module, tests in TARGETS.items():
            print(f"txapns/{module}: {' '.join(tests)}")
        return 0
    modules = args.modules or (
        list(CLIENTS) if args.clients else [m for m in TARGETS if m.startswith("core/")]
    )
    unknown = [m for m in modules if m not in TARGETS]
    if unknown:
        parser.error(f"not a target: {', '.join(unknown)} (see --list)")
    rows = []
    low = False
    for module in modules:
        c, survivors, elapsed = run(module, args.fresh, args.retest, args.only)
        pct = score(c)
        low |= module.startswith("core/") and pct < args.min
        rows.append((module, c, pct, elapsed))
        print(
            f"txapns/{module}: {pct:.1f} % ({c['killed'] + c['timeout']} killed of "
            f"{sum(c.values()) - c['equivalent']}, {c['equivalent']} equivalent) "
            f"in {elapsed:.0f} s",
            flush=True,
        )
        for line in survivors:
            print("    " + line, flush=True)
    print()
    print(
        f"{'module':34} {'mutants':>7} {'killed':>6} {'timeout':>7} {'survived':>8} "
        f"{'no tests':>8} {'gap':>4} {'equiv':>5} {'score':>6} {'time':>6}"
    )
    for module, c, pct, elapsed in rows:
        print(
            f"txapns/{module:27} {sum(c.values()):7} {c['killed']:6} {c['timeout']:7} "
            f"{c['survived']:8} {c['no tests']:8} {c['known gap']:4} {c['equivalent']:5} "
            f"{pct:5.1f}% {elapsed:5.0f}s"
        )
    return 1 if low else 0


if __name__ == "__main__":
    sys.exit(main())
