"""Local worker processes for a study: started with ``multiprocessing``'s spawn method.

A worker gets its job as a Python object (pickled by multiprocessing), not through files or
environment variables: the caller passes a picklable callable, e.g. a ``functools.partial`` of a
module-level function and a frozen dataclass. Spawn, not fork: a fork would copy the parent's
open database connections, threads and LightGBM's OpenMP state.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)


@contextmanager
def spawned(count: int, target: Callable[[int], None]) -> Iterator[None]:
    """Run ``target(worker_index)`` in ``count`` processes (indices 1..count) while in the block.

    Leaving the block waits for them. When the block is interrupted, they are asked to stop
    (SIGINT: each records its running trial as failed) before this re-raises.
    """
    if count <= 0:
        yield
        return
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=target, args=(index,), name=f"tfi-worker-{index}")
        for index in range(1, count + 1)
    ]
    for process in processes:
        process.start()
    try:
        yield
    except BaseException:
        for process in processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGINT)
        raise
    finally:
        for process in processes:
            process.join()
            if process.exitcode != 0:
                log.warning("%s exited with %s", process.name, process.exitcode)
