"""What a smoke check may be, checked before anything runs (the command line, the flow's parameters).

A SQL check is exactly one statement, and not one that ends or opens a transaction: it runs in a READ
ONLY transaction that is rolled back, and a second statement after a ``COMMIT`` would run outside it.
The statement is split with PostgreSQL's own scanner (pglast's), so a ``;`` inside a string, a quoted
identifier, a dollar-quoted body or a comment is not a separator.

A check URL that is a parameter holds no secret: no user info, no token in the query string (Prefect
records parameters; logs and reports show them). A URL with a secret is named instead: an environment
variable of the machine that runs the flow, or a Prefect Secret block, read at check time and shown
masked (``secret_url_display``). No database, no Prefect here.
"""

from __future__ import annotations

import re
from urllib.parse import parse_qsl, urlsplit, urlunsplit

from pglast import split
from pglast.parser import ParseError, scan

#: the first words of statements that open, end or hand over a transaction
_TRANSACTION_CONTROL = {
    "BEGIN_P": "BEGIN",
    "START": "START TRANSACTION",
    "COMMIT": "COMMIT",
    "END_P": "END",
    "ROLLBACK": "ROLLBACK",
    "ABORT_P": "ABORT",
    "SAVEPOINT": "SAVEPOINT",
    "RELEASE": "RELEASE",
}
ONE_QUERY = "a check is one query, run read-only and rolled back"


def _shown(query: str, width: int = 60) -> str:
    flat = " ".join(query.split())
    return repr(flat if len(flat) <= width else flat[: width - 1] + "…")


def sql_check_problem(query: str) -> str | None:
    """What is wrong with ``query`` as a check (None: it is one statement, not transaction control),
    said after the query, e.g. ``'SELECT 1; SELECT 2' holds 2 SQL statements``."""
    try:
        statements = split(query, with_parser=False)
    except ParseError as exc:
        why = str(exc).split(" at or near ", 1)[0]
        return f"{_shown(query)} cannot be read as SQL ({why}); {ONE_QUERY}"
    if not statements:
        return f"{_shown(query)} holds no SQL statement; {ONE_QUERY}"
    if len(statements) > 1:
        return f"{_shown(query)} holds {len(statements)} SQL statements; {ONE_QUERY}"
    words = [t for t in scan(statements[0]) if t.name not in ("SQL_COMMENT", "C_COMMENT")]
    first = words[0].name if words else ""
    control = _TRANSACTION_CONTROL.get(first)
    if first == "PREPARE" and len(words) > 1 and words[1].name == "TRANSACTION":
        control = "PREPARE TRANSACTION"
    if control:
        return f"{_shown(query)} is a transaction-control statement ({control}); {ONE_QUERY}"
    return None


# --------------------------------------------------------------------------------------------------
# URLs

#: query-string keys that carry a secret, compared lowercased, as a whole or as their last word
#: (``access_token``, ``X-Amz-Signature``, ``client_secret``, ``apiKey``)
_SECRET_KEYS = {
    "token",
    "key",
    "apikey",
    "password",
    "passwd",
    "pwd",
    "secret",
    "signature",
    "sig",
    "credential",
    "credentials",
    "auth",
    "jwt",
}


def _words(key: str) -> list[str]:
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", key)  # apiKey -> api Key
    return [w for w in re.split(r"[\s_.\-]+", spaced.lower()) if w]


def _secret_key(key: str) -> bool:
    words = _words(key)
    return bool(words) and ("".join(words) in _SECRET_KEYS or words[-1] in _SECRET_KEYS)


def _any_case(word: str) -> str:
    return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else re.escape(c) for c in word)


#: The same rule as a JSON-schema ``pattern`` (lookaheads only: Python's re and JavaScript read it alike)
#: for the parameter form: Prefect's server refuses to create a run whose check URL matches it, so the
#: secret is never stored with the run. ``url_secret_problem`` stays the check that says why.
NO_SECRET_URL_PATTERN = (
    r"^(?![A-Za-z][A-Za-z0-9+.\-]*://[^/?#]*@)"
    r"(?![^#]*[?&]([^=&#]*([-_.]|[a-z0-9](?=[A-Z])))?("
    + "|".join(_any_case(k) for k in sorted(_SECRET_KEYS, key=len, reverse=True))
    + r")=)"
)


def url_secret_problem(url: str) -> str | None:
    """What secret ``url`` carries (None: none that shows), never repeating it."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return None  # not a URL at all: the syntax check says so
    if "@" in parts.netloc:
        return "carries credentials (user:password@)"
    for key, _ in parse_qsl(parts.query, keep_blank_values=True):
        if _secret_key(key):
            return f"carries a secret in its query string ({key}=…)"
    return None


def display_url(url: str) -> str:
    """The URL without credentials or query string (either may hold a token): for logs and reports."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<not a URL>"
    return urlunsplit((parts.scheme, host, parts.path, "", ""))


def secret_url_display(url: str) -> str:
    """A URL that came from a secret, for reports: only its scheme and host (its path may be the secret,
    as in a webhook's), e.g. ``https://app.internal/…``."""
    try:
        parts = urlsplit(url.strip())
        host = parts.hostname or ""
        if parts.port:
            host = f"{host}:{parts.port}"
    except ValueError:
        return "<not a URL>"
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{rest}"


def is_http_url(url: str) -> bool:
    try:
        parts = urlsplit(url.strip())
        return parts.scheme in ("http", "https") and bool(parts.hostname)
    except ValueError:
        return False
