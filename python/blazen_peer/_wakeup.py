"""A wake-up fd for the event loop a server runs on, so no signal is slept through.

CPython runs signal handlers in the main thread, between bytecodes. A signal
that lands just before the thread enters ``select()`` (or while another
thread, such as a runtime thread of the native module, takes it) only sets a
flag; with nothing else to wake it, an idle event loop then sleeps on, and
Ctrl-C under ``asyncio.run()`` (whose handler is a plain ``signal.signal``
one, with no wake-up fd) could go unanswered until the next event. asyncio
sets a wake-up fd only for ``loop.add_signal_handler``. While a server serves,
a socket the loop watches is the process's wake-up fd, unless something (such
as asyncio itself) already set one.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import socket
import threading


class LoopWakeup:
    """Our wake-up fd on one loop, from :meth:`install` until :meth:`remove`."""

    def __init__(
        self, loop: asyncio.AbstractEventLoop, reader: socket.socket, writer: socket.socket
    ) -> None:
        self._loop = loop
        self._reader = reader
        self._writer = writer

    @classmethod
    def install(cls, loop: asyncio.AbstractEventLoop) -> LoopWakeup | None:
        """Sets it on the main thread's loop when no wake-up fd is set; else None."""
        if threading.current_thread() is not threading.main_thread():
            return None
        reader, writer = socket.socketpair()
        reader.setblocking(False)
        writer.setblocking(False)
        try:
            previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        except ValueError:
            previous = None
        if previous != -1:
            if previous is not None:
                signal.set_wakeup_fd(previous)  # someone wakes the loop already
            reader.close()
            writer.close()
            return None
        loop.add_reader(reader.fileno(), cls._drain, reader)
        return cls(loop, reader, writer)

    @staticmethod
    def _drain(reader: socket.socket) -> None:
        # The bytes are signal numbers; the handlers run once the loop is awake.
        with contextlib.suppress(OSError):
            while reader.recv(4096):
                pass

    def remove(self) -> None:
        """Unsets it (unless another wake-up fd replaced it meanwhile) and closes it."""
        if threading.current_thread() is threading.main_thread():
            current = signal.set_wakeup_fd(-1)
            if current != self._writer.fileno():
                signal.set_wakeup_fd(current)
        with contextlib.suppress(RuntimeError):  # the loop may be closed already
            self._loop.remove_reader(self._reader.fileno())
        self._reader.close()
        self._writer.close()
