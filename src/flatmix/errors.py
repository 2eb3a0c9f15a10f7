"""The one exception type for bad input: the CLI prints its message on one line, without a traceback."""


class FlatmixError(Exception):
    """A problem with the user's input (a path, a key, a class id) that the message names."""
