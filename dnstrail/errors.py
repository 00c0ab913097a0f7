"""The root of dnstrail's exceptions: the CLI turns any of these into a one-line error."""


class DnstrailError(Exception):
    """Base class of every error dnstrail reports to a person. The message is the report."""
