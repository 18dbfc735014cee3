"""The two ways a run fails before a verdict; both end with exit code 2 and one line."""


class UsageError(ValueError):
    """Bad input: the message says what was wrong and how to fix it."""


class HostFailure(RuntimeError):
    """A host died or hung, or the cluster cannot hold the request; the message names which."""
