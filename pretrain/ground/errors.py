"""The one error a wrong setting raises, wherever it is found: the message names the field and says what is
allowed, and the CLIs print it as one line."""


class ConfigError(ValueError):
    """A configuration value is wrong; the message names the field and says what is allowed."""
