"""Progress reporting and cancellation for long computations.

A progress callback is any callable ``callback(fraction, text)``; it returns ``False`` to ask
for cancellation (any other return value, ``None`` included, means go on). Library functions
take ``progress=None`` and call :func:`report` which raises :class:`CancelledError` on cancel.
"""

from .errors import CancelledError


def report(progress, fraction, text=""):
    """Report ``fraction`` in [0, 1] to ``progress`` (if any); raise CancelledError on cancel."""
    if progress is None:
        return
    if progress(float(min(max(fraction, 0.0), 1.0)), text) is False:
        raise CancelledError(f"cancelled by the user during: {text or 'computation'}")


def scaled(progress, start, stop):
    """Return a callback that maps [0, 1] of a sub-task onto [start, stop] of ``progress``."""
    if progress is None:
        return None

    def sub(fraction, text=""):
        return progress(start + (stop - start) * float(fraction), text)

    return sub
