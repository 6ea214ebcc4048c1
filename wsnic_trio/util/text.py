"""Text from peers made safe for logs, API answers and terminals."""

from __future__ import annotations

__all__ = ["printable"]


def _shown(char: str, backslash: bool) -> str:
    if char == "\\":
        return "\\\\" if backslash else char
    return char if char.isprintable() else _escape(char)


def _escape(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte that was not UTF-8 (surrogateescape)
        return f"\\x{code - 0xDC00:02x}"
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def printable(text: str, limit: int = 200, *, backslash: bool = True) -> str:
    """``text`` as it may go into a log line, an API answer or a table cell.

    Peers choose their socket names and their Origin header: a newline in one would
    forge a log line, an escape sequence would drive the operator's terminal. Control
    and other invisible characters become ``\\xNN`` / ``\\uNNNN`` (bytes that were not
    UTF-8, decoded with ``surrogateescape``, show as the byte), a backslash is doubled
    so the result is unambiguous (``backslash=False`` leaves it, for text that was
    escaped already), and anything over ``limit`` characters is cut.
    """
    if len(text) > limit:
        return printable(text[:limit], limit, backslash=backslash) + "..."
    if text.isprintable() and not (backslash and "\\" in text):
        return text
    return "".join(_shown(c, backslash) for c in text)
