"""Stopping on Ctrl-C (SIGINT) or ``kill`` (SIGTERM) without corrupting a store.

A stop request raises KeyboardInterrupt at once while tfi computes, so a trial stops promptly
and is recorded as failed. Inside a *critical section* (a write to the MLflow store, the
registry or the Optuna storage, or the whole trial loop but its model fitting) the request is
held until the section ends or an :func:`interruptible` block starts, so no database write is
cut in half; a second request (more than two seconds after the first: ``mlflow run`` turns one
Ctrl-C into a SIGINT and a SIGTERM) does not wait. Python drops an exception raised while it runs a
finaliser, so the request is also remembered and :func:`check` raises it at the trial loop's
next turn.
"""

from __future__ import annotations

import functools
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")
SAME_REQUEST_SECONDS = 2.0


class _State:
    def __init__(self) -> None:
        self.requested = threading.Event()
        self.depth = 0  # nesting of critical sections (main thread only: signals land there)
        self.held = False
        self.first_request = 0.0  # time.monotonic() of the first stop request


_state = _State()


def install() -> None:
    """Handle SIGTERM, and SIGINT unless the shell started us with it ignored."""
    signal.signal(signal.SIGTERM, _handler)
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:
        signal.signal(signal.SIGINT, _handler)
    default_hook = sys.unraisablehook

    def quiet_dropped_interrupt(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            default_hook(unraisable)

    sys.unraisablehook = quiet_dropped_interrupt


def check() -> None:
    """Raise KeyboardInterrupt if a stop was requested (and perhaps dropped or held)."""
    if _state.requested.is_set():
        _state.held = False
        raise KeyboardInterrupt("stop requested")


@contextmanager
def interruptible() -> Iterator[None]:
    """Let a stop request interrupt this block at once, even inside a critical section."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    saved, _state.depth = _state.depth, 0
    try:
        check()
        yield
    finally:
        _state.depth = saved


@contextmanager
def critical(reraise: bool = True) -> Iterator[None]:
    """Hold stop requests until the block is done (unless a second one comes).

    A held request is raised when the block ends, or with ``reraise=False`` left for the next
    :func:`check` (for a block whose result must reach its caller first).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _state.depth += 1
    try:
        yield
    finally:
        _state.depth -= 1
    if _state.depth == 0 and _state.held:
        _state.held = False
        if reraise:
            raise KeyboardInterrupt("stop requested")


def critical_section(function: Callable[P, R]) -> Callable[P, R]:
    """Decorator form of :func:`critical`."""

    @functools.wraps(function)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with critical():
            return function(*args, **kwargs)

    return wrapper


def _handler(signum: int, frame: object) -> None:
    now = time.monotonic()
    # `mlflow run` passes Ctrl-C on as SIGTERM right after the SIGINT the terminal sent to the
    # whole process group: signals this close together are one request, not an insistent
    # second one that may cut a critical write in half.
    again = _state.requested.is_set() and now - _state.first_request > SAME_REQUEST_SECONDS
    if not _state.requested.is_set():
        _state.first_request = now
    _state.requested.set()
    if _state.depth and not again:
        _state.held = True
        return
    raise KeyboardInterrupt(f"stopped by {signal.Signals(signum).name}")
