"""Reading a user's text file (a recipe, a data file): UTF-8, or one clear error naming the file."""

from __future__ import annotations

from pathlib import Path

from softprompt.errors import ConfigError


def read_utf8(path: Path, what: str) -> str:
    """A text file's contents; a file that is not UTF-8 (UTF-16, latin-1, ...) is a ConfigError naming it."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as e:
        bom = " (it starts with a UTF-16 byte-order mark)" if raw[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise ConfigError(f"{what} {str(path)!r} is not UTF-8 text{bom}: byte {raw[e.start]:#04x} at offset {e.start}; "
                          "save it as UTF-8") from None
