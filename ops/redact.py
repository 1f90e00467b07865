"""Keep passwords out of every log line, error message and endpoint body.

Redaction errs on the side of hiding too much: it works on anything that
looks like a URL or a DSN, parseable or not, because the strings most
likely to leak are the mistyped ones a parser rejects.  Three shapes:

* a user-info part after something scheme-like -- ``redis://:pw@``,
  ``postgres:/u:pw@`` and ``redis//:pw@`` (typos), ``u:p@ss@`` (a password
  holding ``@``: everything up to the *last* ``@`` of the word goes);
* a password in a query string or a key=value DSN -- ``?password=pw``,
  ``&sslpassword=pw``, ``password='p w'``;
* nothing else: a bare ``user:pw@host`` with no scheme is not recognised.
"""

from __future__ import annotations

import re

_USERINFO = re.compile(
    r"(?P<lead>[A-Za-z][A-Za-z0-9+.-]*(?::/{0,2}|/{1,2}))(?P<user>[^:/@\s'\"]*):(?P<pw>[^\s]*)@")
_KEYWORD = re.compile(
    r"(?i)(?P<key>\b(?:ssl)?(?:password|passwd|pwd)\s*=\s*)(?P<value>'(?:[^'\\]|\\.)*'?|\"[^\"]*\"?|[^&\s;]*)")


def redact(text: str) -> str:
    """``text`` with every password of a URL or DSN replaced by ``***``."""
    text = _USERINFO.sub(lambda m: f"{m['lead']}{m['user']}:***@", text)
    return _KEYWORD.sub(lambda m: f"{m['key']}***", text)
