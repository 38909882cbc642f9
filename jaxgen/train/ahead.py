"""Compiling a run's programs side by side, before its first step.

XLA compiles one program on one thread, and a run's train step, eval steps and sampler are
independent programs: the loop compiles the train step on a worker thread while its own
thread compiles init and then the eval steps and the sampler. jit keeps what
`lower(...).compile()` built, so the first real call of each runs at once. On the 2-core CPU
with an empty compilation cache the DDPM smoke run took 0.73x the wall time of compiling
them one after the other (benchmarks/README.md).

Compiling ahead only saves time: a program whose ahead compile fails (or was given other
shapes than its real call) compiles again at its first call, which raises the error there.
"""

import collections
import logging
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("jaxgen")


class Ahead:
    """Compiles jitted functions for given (abstract or concrete) arguments, in the order given.

    compile(fn, *args) queues one; `workers` threads start on the queue at once. wait() compiles
    what no worker has started yet on the calling thread, then returns when all have ended.
    One worker suits the loop: it takes the train step (the longest compile) while the loop's
    thread compiles init and then the rest. Used as a context manager, an error (or a stop)
    inside drops the compiles not started; the one running ends before the process exits
    (a thread stopped inside XLA aborts the process).
    """

    def __init__(self, workers: int = 1):
        self._workers = workers
        self._jobs: collections.deque = collections.deque()
        self._lock = threading.Lock()
        self._threads: list[threading.Thread] = []

    def __enter__(self) -> "Ahead":
        return self

    def __exit__(self, *exc_info) -> None:
        with self._lock:
            self._jobs.clear()

    def compile(self, fn: Callable, *args: Any) -> None:
        with self._lock:
            self._jobs.append((fn, args))
            self._threads = [thread for thread in self._threads if thread.is_alive()]
            if len(self._threads) < self._workers:
                thread = threading.Thread(target=self._drain, name="compile ahead")
                thread.start()
                self._threads.append(thread)

    def wait(self) -> None:
        self._drain()
        for thread in self._threads:
            thread.join()
        self._threads = []

    def _drain(self) -> None:
        while True:
            with self._lock:
                if not self._jobs:
                    return
                fn, args = self._jobs.popleft()
            try:
                fn.lower(*args).compile()
            except Exception as error:  # the real call compiles again and raises it there
                log.debug("compiling %s ahead failed: %r", fn, error)
