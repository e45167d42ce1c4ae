"""Exception types whose messages name the file or setting at fault and what to do about it."""


class I3ADError(Exception):
    """Base class for errors caused by user input or a failed run, reported without a traceback."""


class DatasetError(I3ADError):
    """A dataset folder, image or mask is missing, unreadable or inconsistent."""


class ConfigError(I3ADError, ValueError):
    """A setting has an invalid value (a ValueError too, so validators such as pydantic report its key)."""


class TrainingDiverged(I3ADError):
    """A loss became NaN or Inf; the last good checkpoint is kept."""


class CheckpointError(I3ADError):
    """A checkpoint or model folder is missing, corrupt or incompatible."""


def root_message(exc: BaseException | str) -> str:
    """`Type: message` of the innermost cause of an exception chain.

    Follows `__cause__` and also a `.cause` attribute, which wrappers such as Ray's RayTaskError and
    TuneError carry instead of (or besides) a Python cause; a cycle in the chain ends the walk. Tune
    hands some trial errors back as text only (a restored experiment's error file): those pass as they are.
    """
    if not isinstance(exc, BaseException):
        return str(exc)
    seen: set[int] = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "cause", None) or exc.__cause__
        if not isinstance(inner, BaseException):
            break
        exc = inner
    return f"{type(exc).__name__}: {exc}"
