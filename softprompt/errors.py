"""The one exception type users see: a problem with their input, and how to fix it.

The CLI turns it into a single line on stderr and exit code 2, with no traceback.
"""


class SoftPromptError(Exception):
    """Bad user input (config, data, model path, adapter). The message names the fix."""


class ConfigError(SoftPromptError):
    """A recipe or override that does not match the config schema."""
