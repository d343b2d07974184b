"""Running functions on a simulator's event-loop thread, asked from other threads.

The simulated VMM's loop is the only writer of the queues' indices it owns; tests and
tasks that want to look or change something hand it a function instead. Owns the
queue of (function, future) pairs and the wake pipe the loop polls beside its devices.
"""

from __future__ import annotations

import contextlib
import os
import queue
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")


class LoopCalls:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self.fd, self._write_fd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def submit(self, fn: Callable[[], T]) -> Future[T]:
        """Queue `fn` for the loop thread and wake it; the future holds its result."""
        fut: Future[T] = Future()
        self._queue.put((fn, fut))
        os.write(self._write_fd, b"c")
        return fut

    def wake(self) -> None:
        """Wake the loop without a call (e.g. to let it see a stop flag)."""
        with contextlib.suppress(OSError):
            os.write(self._write_fd, b"x")

    def run_pending(self) -> None:
        """On the loop thread, when `fd` is readable: run every queued function."""
        with contextlib.suppress(BlockingIOError):
            while os.read(self.fd, 4096):
                pass
        while True:
            try:
                fn, fut = self._queue.get_nowait()
            except queue.Empty:
                return
            try:
                fut.set_result(fn())
            except BaseException as exc:
                fut.set_exception(exc)

    def close(self) -> None:
        for fd in (self.fd, self._write_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
