"""Secret scrubbing shared by the logger, the ledger's error texts and the reports.

Kept apart from config loading so that the CLI can install the redacting log handler before it knows
whether it will need YAML at all (``tars-run list`` does not).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

SECRET_KEY = re.compile(r"(pass(word)?|secret|token|api[_-]?key|credential)", re.I)
# a secret-named query parameter anywhere in text: ``?password=x``, ``&sslpassword=x``, ``;token=x``
QUERY_SECRET = re.compile(r"([?&;][\w.-]*(?:pass(?:word)?|secret|token|api[_-]?key)[\w.-]*)=([^&;\s#]+)", re.I)
SECRET_KEYWORD = re.compile(r"\b((?:pass(?:word)?|secret|token|api[_-]?key)\w*)\s*=\s*('[^']*'|\S+)", re.I)
URL_PASSWORD = re.compile(r"(?P<pre>[a-z][a-z0-9+.-]*://[^:/@\s]*:)(?P<pw>[^@\s]+)(?P<post>@)", re.I)


def safe_url(url: str) -> str:
    """``url`` with every credential replaced by ``***``, for messages.

    Covers the password (and a bare token) in the user part, secret-named query parameters
    (libpq's ``?password=``, ``?token=``) and libpq keyword strings (``host=db password=x``). Works on
    any scheme and on text that is not a URL, so callers never need to check first.
    """
    from urllib.parse import urlsplit, urlunsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return _scrub_keywords(URL_PASSWORD.sub(lambda m: f"{m.group('pre')}***{m.group('post')}", url))
    if not parts.scheme or not parts.netloc:
        return _scrub_keywords(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user, sep, _pw = userinfo.partition(":")
        # ``redis://token@host``: a bare user part is a credential for Redis and HTTP APIs, so it goes too
        netloc = f"{user}:***@{hostport}" if sep else f"***@{hostport}"
    query = QUERY_SECRET.sub(lambda m: f"{m.group(1)}=***", f"?{parts.query}")[1:]
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def _scrub_keywords(text: str) -> str:
    return SECRET_KEYWORD.sub(lambda m: f"{m.group(1)}=***", text)


def host_port(url: str, default_port: int | None = None) -> str:
    """``host:port`` of ``url`` (never its credentials): the part of a target an error message names."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url if "//" in url else f"//{url}")
        port = parts.port or default_port
    except ValueError:
        return safe_url(url)
    host = parts.hostname or "?"
    host = f"[{host}]" if ":" in host else host
    return f"{host}:{port}" if port else host


class Redactor:
    """Scrubs known secrets and URL passwords from text; shared by the logger and the reports."""

    def __init__(self) -> None:
        self.secrets: set[str] = set()

    def add(self, value: object) -> None:
        if isinstance(value, str) and len(value) >= 3:
            self.secrets.add(value)
            self.add_from_url(value)

    def add_from_url(self, text: str) -> None:
        """Remember the credentials inside URLs in ``text`` so they are scrubbed wherever they recur."""
        for m in URL_PASSWORD.finditer(text):
            if len(m.group("pw")) >= 3:
                self.secrets.add(m.group("pw"))
        for m in QUERY_SECRET.finditer(text):
            if len(m.group(2)) >= 3:
                self.secrets.add(m.group(2))

    def collect(self, node: Any, key: str = "") -> None:
        if isinstance(node, Mapping):
            for k, v in node.items():
                self.collect(v, str(k))
        elif isinstance(node, list):
            for v in node:
                self.collect(v, key)
        elif isinstance(node, str):
            if SECRET_KEY.search(key):
                self.add(node)
            self.add_from_url(node)

    def __call__(self, text: str) -> str:
        text = URL_PASSWORD.sub(lambda m: f"{m.group('pre')}***{m.group('post')}", text)
        text = QUERY_SECRET.sub(lambda m: f"{m.group(1)}=***", text)
        for secret in sorted(self.secrets, key=len, reverse=True):
            text = text.replace(secret, "***")
        return text

    def data(self, node: Any) -> Any:
        """A redacted deep copy of JSON-like data (for reports)."""
        if isinstance(node, Mapping):
            return {k: ("***" if SECRET_KEY.search(str(k)) and node[k] else self.data(v)) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return [self.data(v) for v in node]
        if isinstance(node, str):
            return self(node)
        return node


class RedactingFilter(logging.Filter):
    def __init__(self, redactor: Redactor) -> None:
        super().__init__()
        self.redactor = redactor

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = self.redactor(record.getMessage())
        record.args = None
        return True
