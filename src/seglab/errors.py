"""The error seglab raises for a bad config or bad data: the entry points print its
message as one line (no traceback), so every message must name the thing and the fix."""


class SeglabError(ValueError):
    """A problem the user can fix in their config or data."""


def seglab_cause(err: BaseException) -> SeglabError | None:
    """The `SeglabError` behind `err`: itself, or the first one in its chain of causes
    (Hydra wraps an error raised while instantiating a config in its own exception)."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, SeglabError):
            return err
        seen.add(id(err))
        err = err.__cause__
    return None


def exit_message(err: SeglabError) -> str:
    """The one line an entry point prints for `err`.

    A SeglabError raised in a DataLoader worker reaches the main process re-raised by
    torch with the worker's whole traceback in its message ("Caught SeglabError in
    DataLoader worker process 0. Original Traceback ... SeglabError: <message>"); only
    the original message is kept.
    """
    text = str(err)
    marker = f"{SeglabError.__name__}: "
    if text.startswith(f"Caught {SeglabError.__name__}") and marker in text:
        text = text.rsplit(marker, 1)[1].strip() + " (raised in a DataLoader worker)"
    return f"seglab: error: {text}"


def one_line(err: BaseException) -> str:
    """`err`'s message with its white space (newlines too) folded into single spaces."""
    return " ".join(str(err).split())
