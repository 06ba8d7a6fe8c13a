"""The one exception type users see: a problem with their input, and how to fix it.

The CLI turns it into a single line on stderr and exit code 2, with no traceback.
"""


class SoftPromptError(Exception):
    """Bad user input (config, data, model path, adapter). The message names the fix."""


class ConfigError(SoftPromptError):
    """A recipe or override that does not match the config schema."""


def gist(e: BaseException, limit: int = 160, typed: bool = False) -> str:
    """A library error as it goes into one of our one-line messages: its first line (cut to `limit`
    characters), prefixed by its type's name when `typed`; the type's name alone when it has no message."""
    text = str(e).strip()
    if not text:
        return type(e).__name__
    line = text.splitlines()[0][:limit]
    return f"{type(e).__name__}: {line}" if typed else line
