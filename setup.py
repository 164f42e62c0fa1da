"""Packaging shim: the metadata is in pyproject.toml (PEP 621).

Kept so that tools which still call ``setup.py`` find it; setuptools reads everything,
including the twistd plugin's packaging, from ``pyproject.toml``.
"""

from setuptools import setup

setup()
