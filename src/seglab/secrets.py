"""Credentials never reach a file seglab writes.

A database URL with a password (`postgresql://user:SECRET@host/db`) may come in through a
config value or a command-line override; `redact` replaces the password in every string
of a config, a record or a command line before it is saved:

    redact({"storage": "postgresql://u:SECRET@h/db"}) == {"storage": "postgresql://u:***@h/db"}

Pass passwords outside the command line instead (`PGPASSWORD`, `~/.pgpass`, or an
interpolation such as `${oc.env:SEGLAB_STORAGE}`), so that no file ever sees them.
"""

from __future__ import annotations

import re
from typing import Any

MASK = "***"

# scheme://user:password@host: the password is everything after the first ':' of the
# user-info part up to the last '@' before the host (passwords may hold '@' and ':').
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/?#@\s]*:)(?P<password>[^\s/?#]*)@")


def redact_text(text: str) -> str:
    """`text` with the password of every URL in it replaced by `***`."""

    def mask(match: re.Match[str]) -> str:
        password = match.group("password")
        if not password or password == MASK:
            return match.group(0)
        return f"{match.group('head')}{MASK}@"

    return _URL_PASSWORD.sub(mask, text)


def redact(value: Any) -> Any:
    """A copy of `value` (nested dicts, lists, tuples, strings) with every URL's password
    replaced by `***`; other values are returned as they are."""
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, dict):
        return {key: redact(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact(item) for item in value]
    if isinstance(value, tuple):
        return tuple(redact(item) for item in value)
    return value
