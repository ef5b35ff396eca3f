"""Where a collection lives: an index dir (a path) or a PostgreSQL table (a postgresql:// URL), and how a location
is shown in messages (never with its password)."""
from __future__ import annotations

import os
import re

from retrieval.kinds import IndexDirError

URL_SCHEMES = ("postgresql://", "postgres://")
ENV = "SSLFORGE_INDEX"


def is_database(location: str | os.PathLike | None) -> bool:
    return isinstance(location, str) and location.startswith(URL_SCHEMES)


def display(location: str | os.PathLike) -> str:
    """The location as messages show it: a URL's password (in its user part or a `password` parameter) as ***.
    Plain text, no URL parsing: a password with characters a URL should have escaped is masked all the same."""
    text = str(location)
    if not is_database(text):
        return text
    scheme, _, rest = text.partition("://")
    user, at, host = rest.rpartition("@")  # a host never holds "@": everything before the last one is user info
    if at and ":" in user:
        rest = user.split(":", 1)[0] + ":***@" + host
    return scheme + "://" + re.sub(r"([?&]password=)[^&]*", r"\1***", rest)


def location_or_env(location: str | None, option: str = "--index") -> str:
    """The given location, else $SSLFORGE_INDEX; IndexDirError when neither is set."""
    location = location or os.environ.get(ENV)
    if not location:
        raise IndexDirError(f"no collection given: pass {option} (an index dir or a postgresql:// URL) or set {ENV}")
    return location
