"""The one exception type users see: the CLI prints its message on one line and exits 2."""


class TunesmithError(Exception):
    """A problem with the user's input (file, config, model name) rather than a bug in tunesmith."""
