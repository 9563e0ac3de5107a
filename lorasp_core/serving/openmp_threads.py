"""Torch work off the decoding thread runs on a thread that ends with it, so its OpenMP team ends too.

torch's CPU kernels run on one OpenMP team per calling thread, kept while the thread lives. GNU OpenMP
throttles its workers' spin-waits while more threads are managed than there are CPUs, so one idle extra
team makes every parallel op of the decoding thread wake its workers by futex: measured ~1.5x slower
decode steps on a 2-core machine (benchmarks/results/serving.md). Request threads live long (a web
server's pool), so the engine never lets them keep a team: a base-model load or an adapter install
from such a thread runs here, and forwards go to the decoding thread (ContinuousScheduler.call).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def run_in_short_lived_thread(work: Callable[[], T], *, name: str = "lorasp-torch-work") -> T:
    """`work()` on a new thread, joined: its result, or its exception raised here."""
    outcome: list[T] = []
    failure: list[BaseException] = []

    def target() -> None:
        try:
            outcome.append(work())
        except BaseException as error:  # re-raised in the caller's thread
            failure.append(error)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    thread.join()
    if failure:
        raise failure[0]
    return outcome[0]
