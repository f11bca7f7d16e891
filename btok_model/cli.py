"""How every ``python -m btok_model.<command>`` reports an error its user can fix: one
``error: ...`` line on stderr and exit status 2 (argparse's own status for a bad flag), no
traceback.

:func:`fail` prints the line and raises :class:`UsageError` (a ``SystemExit`` with code 2 whose
``str()`` is the line); :func:`command` wraps a command's ``main`` so that the project's
user-error exceptions raised anywhere below it (a :class:`~btok_model.datasets.DataError`: a
bad file or row, named; an :class:`~btok_model.embedder.collate.ExampleError`: an input the
model refuses) end the same way, also when a data-loader worker raised them.
"""

from __future__ import annotations

import functools
import sys
from typing import NoReturn

__all__ = ["EXIT_STATUS", "UsageError", "command", "fail", "user_error_message"]

EXIT_STATUS = 2


class UsageError(SystemExit):
    """A command's user-fixable error: exit status :data:`EXIT_STATUS`; ``str()`` is its
    ``error: ...`` line (:func:`fail` has printed it).

    Attributes:
        message: the line without ``error: ``.
    """

    def __init__(self, message: str):
        super().__init__(EXIT_STATUS)
        self.message = message

    def __str__(self) -> str:
        return f"error: {self.message}"


def fail(message: str) -> NoReturn:
    """Print ``error: message`` on stderr and exit with status 2 (raise :class:`UsageError`).

    Progress bars still open (the run stops inside one: a training step, an encode block) are
    closed first, so the line starts a line of its own."""
    _close_progress_bars()
    print(f"error: {message}", file=sys.stderr, flush=True)
    raise UsageError(message)


def _close_progress_bars() -> None:
    std = sys.modules.get("tqdm.std")  # not imported: no bar to close
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        bar.close()


def _user_errors() -> tuple[type[BaseException], ...]:
    from .datasets.jsonl import DataError
    from .embedder.collate import ExampleError

    return DataError, ExampleError


def user_error_message(err: BaseException) -> str:
    """``str(err)``; for an exception a ``torch.utils.data.DataLoader`` worker raised (re-raised
    in the training process as its type with the worker's traceback as the message), the
    original message."""
    text = str(err)
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        cls = type(err)
        for name in (f"{cls.__module__}.{cls.__qualname__}", cls.__qualname__):
            _, found, message = text.rpartition(f"\n{name}: ")
            if found:
                return message.strip()
    return text


def command(main):
    """Decorate a command's ``main(argv=None)``: a :class:`~btok_model.datasets.DataError` or
    :class:`~btok_model.embedder.collate.ExampleError` it raises becomes one ``error:`` line and
    exit status 2 (:func:`fail`)."""

    @functools.wraps(main)
    def wrapped(argv: list[str] | None = None):
        try:
            return main(argv)
        except ValueError as err:  # the user errors are ValueErrors, imported only when one is raised
            if not isinstance(err, _user_errors()):
                raise
            fail(user_error_message(err))

    return wrapped
