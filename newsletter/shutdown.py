"""The process's stop request: SIGTERM or Ctrl-C, caught by the code that was waiting
(the CLI turns SIGTERM into KeyboardInterrupt), becomes ``request(reason)``; whatever is
running in other threads (a send started by the scheduler, its backoffs and waits)
listens here and stops between requests. Only the main thread's code calls ``request``:
never a signal handler, which could find a lock held by the thread it interrupted.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

Listener = Callable[[str], None]

_lock = threading.Lock()
_listeners: list[Listener] = []
_state: dict[str, str] = {}  # "reason" once a stop was requested


def request(reason: str) -> None:
    """Ask everything running in this process to stop, and tell each listener why."""
    with _lock:
        _state.setdefault("reason", reason)
        listeners = list(_listeners)
    for listener in listeners:
        listener(reason)


def requested() -> str | None:
    """Why the process is stopping, or None while it is not."""
    return _state.get("reason")


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener(reason)`` on a stop request while the block runs (at once if the
    process is stopping already)."""
    with _lock:
        _listeners.append(listener)
        reason = _state.get("reason")
    if reason is not None:
        listener(reason)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def reset() -> None:
    """Forget a stop request (a test that stopped a send in-process)."""
    with _lock:
        _state.clear()
