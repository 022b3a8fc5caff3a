"""Secrets never reach a file: one helper that every write point calls.

An OpenAI-compatible server may echo the API key back (in an error body, or in a judge's reply
that quotes its own request headers). srmir reads keys from environment variables and sends them
only in the Authorization header, but what comes back is written to datasets, judgments, caches
and reports. :func:`scrub` replaces every known secret value with ``***``; the writers in
:mod:`srmir.io`, the dataset builder's partial file, the metrics log and the HTTP client call it.

Known secrets: values registered with :func:`register` (the key an HTTP client was given, whatever
its variable is called) and the values of environment variables whose names end in ``KEY``,
``TOKEN``, ``SECRET`` or ``PASSWORD`` (``OPENAI_API_KEY``, ``HF_TOKEN``, ...). Values shorter
than 8 characters are not treated as secrets (``TOKENIZERS_PARALLELISM=false`` is no key).
"""
from __future__ import annotations

import os
import re
import threading

MASK = "***"
_MIN_LENGTH = 8
_SECRET_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD)$", re.IGNORECASE)
_registered: set[str] = set()
_lock = threading.Lock()


def register(value: str | None) -> None:
    """Treat ``value`` as a secret from now on (no-op for None or short values)."""
    if value and len(value) >= _MIN_LENGTH:
        with _lock:
            _registered.add(value)


def secrets() -> list[str]:
    """Every secret value known now, longest first (so a key containing another is masked whole)."""
    found = set(_registered)
    for name, value in os.environ.items():
        if len(value) >= _MIN_LENGTH and _SECRET_NAME.search(name):
            found.add(value)
    return sorted(found, key=len, reverse=True)


def scrub(text: str) -> str:
    """``text`` with every known secret replaced by ``***``."""
    for secret in secrets():
        if secret in text:
            text = text.replace(secret, MASK)
    return text
