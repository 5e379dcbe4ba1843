"""The error seglab raises for a bad config or bad data: the entry points print its
message as one line (no traceback), so every message must name the thing and the fix."""


class SeglabError(ValueError):
    """A problem the user can fix in their config or data."""
