"""Endpoint URLs as they may be shown: RPC and block-engine URLs often carry an API key.

Providers put the key in the query (`?api-key=...`), in the path (`/<token>/`), or in the user part
(`https://user:key@host`). A URL printed in a log line, an exception or `describe()` is shown
through `shown_url`, and any text that may quote the URL (an aiohttp error) through `redacted`.
"""
from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

MASK = "***"
# A path segment this long, of token characters, is taken for a key (QuickNode, Ankr, Alchemy put
# theirs there); the paths the executor itself uses (/api/v1/bundles) are short words.
TOKEN_SEGMENT = re.compile(r"[A-Za-z0-9_\-]{16,}")


def shown_url(url: str) -> str:
    """``url`` with its user part, every query value and every token-like path segment masked."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return MASK  # not a URL anyone can read safely
    host = parts.hostname or ""
    netloc = (f"{MASK}@" if parts.username or parts.password else "") + host + (f":{port}" if port else "")
    path = "/".join(MASK if TOKEN_SEGMENT.fullmatch(segment) else segment for segment in parts.path.split("/"))
    query = urlencode([(name, MASK) for name, _ in parse_qsl(parts.query, keep_blank_values=True)], safe="*")
    return urlunsplit((parts.scheme, netloc, path, query, ""))


def secrets_of(url: str) -> list[str]:
    """The parts of ``url`` that `shown_url` masks, longest first (to replace in any text that quotes them)."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return [url]
    found = [value for value in (parts.username, parts.password) if value]
    found += [value for _, value in parse_qsl(parts.query, keep_blank_values=True) if value]
    found += [segment for segment in parts.path.split("/") if TOKEN_SEGMENT.fullmatch(segment)]
    return sorted(set(found), key=len, reverse=True)


def redacted(text: str, *urls: str) -> str:
    """``text`` with every secret part of ``urls`` masked (an error message may quote the URL it failed on)."""
    for url in urls:
        for secret in secrets_of(url):
            text = text.replace(secret, MASK)
    return text
