"""Packaging for txapns.

``twisted/plugins/txapns_plugin.py`` is shipped as a module of the ``twisted.plugins``
namespace without an ``__init__.py``: shipping one would shadow Twisted's own plugin package.
"""

from pathlib import Path

from setuptools import setup

setup(
    name="txapns",
    version="0.1.0",
    description="Twisted-native Apple Push Notification service provider (binary and HTTP/2)",
    long_description=(Path(__file__).parent / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",
    packages=[
        "txapns",
        "txapns.core",
        "txapns.core.http2",
        "txapns.service",
        "txapns.testing",
        "twisted.plugins",
    ],
    package_data={"txapns": ["py.typed"], "twisted.plugins": ["txapns_plugin.py"]},
    install_requires=[
        "twisted>=23.10",
        "pyopenssl>=23.2",
        "service-identity>=23.1",
        "cryptography>=41",
        "h2>=4.1",
        "hpack>=4.0",
        # txapns send's progress bar on a terminal.
        "tqdm>=4.66",
        # The service's lean HTTP/1.1 layer (llhttp's C parser): a fraction of twisted.web's
        # CPU per API request (txapns/service/http1.py).
        "httptools>=0.6",
    ],
    extras_require={
        # The Redis Streams spool backend (many instances on one queue); hiredis parses
        # replies in C, which txredisapi uses when it is installed.
        "redis": ["txredisapi>=1.4.10", "hiredis>=2"],
        # aioapns: a third-party client the interop tests drive against the fake.
        "test": [
            "pytest>=8",
            "pytest-xdist>=3",
            "hypothesis>=6.100",
            "build",
            "wheel",
            "aioapns>=3",
        ],
        "dev": [
            "txredisapi>=1.4.10",
            "hiredis>=2",
            "pytest>=8",
            # README's test command runs the suite in 4 workers: many tests wait on real
            # loopback TLS and subprocesses, so 4 workers finish sooner even on 2 cores.
            "pytest-xdist>=3",
            "hypothesis>=6.100",
            "build",
            "wheel",
            "aioapns>=3",
            "mypy>=1.10",
            "mypy-zope",
            "types-tqdm",
            "ruff>=0.5",
            "sphinx>=7",
            "furo>=2024.1",
            # .ci/fuzz-api: fuzzes the HTTP API from docs/openapi.yaml.
            "schemathesis>=4",
        ],
        # tools/mutation.py; pinned: mutant names and the results cache depend on the version.
        "mutation": ["mutmut==3.8.1"],
    },
    entry_points={"console_scripts": ["txapns = txapns.cli:main"]},
    classifiers=[
        "Framework :: Twisted",
        "Programming Language :: Python :: 3",
        "Topic :: Communications",
    ],
)
