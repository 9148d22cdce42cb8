"""Python text that UTF-8 cannot carry.

A Python `str` may hold lone surrogates (`os.fsdecode` of a file name that is
not UTF-8, bytes decoded with `surrogateescape`); the wire's strings are
UTF-8 and cannot. Diagnostic text (error messages, tracebacks, log records)
is sent with them escaped, as `repr` writes them; data (a run's output) is
never changed: it is refused with an error saying what it holds.
"""

from __future__ import annotations


def escaped(text: str) -> str:
    """`text` with each lone surrogate written as its escape (`\\udce9`)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def unencodable(text: str) -> str | None:
    """The first character of `text` UTF-8 cannot encode, escaped, or None."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return escaped(text[exc.start : exc.end])
    return None
