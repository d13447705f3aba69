"""How every relay process (the server and the forwarding process) sets up the
interpreter and the allocator it runs on, before it starts work."""

from __future__ import annotations

import ctypes
import ctypes.util
import gc
import sys

#: Allocations of container objects, net of deallocations, that start a collection of
#: the youngest generation (CPython's default: 700).
GC_YOUNG_THRESHOLD = 10_000
#: Longest the event loop keeps the GIL from a thread that wants it (seconds; CPython's
#: default: 0.005).
SWITCH_INTERVAL = 0.001


def tune() -> None:
    return_large_blocks_to_the_system()
    collect_garbage_less_often()
    hand_the_interpreter_over_sooner()


def hand_the_interpreter_over_sooner() -> None:
    """The outbox's database threads (relay.outbox.runner) run a statement, then wait for
    the interpreter to hand them the result; while the event loop is busy that wait lasts
    up to the switch interval, which at CPython's default held a claim of many rows back
    long enough to slow a drain under load (BENCHMARKS.md)."""
    sys.setswitchinterval(min(sys.getswitchinterval(), SWITCH_INTERVAL))


def return_large_blocks_to_the_system() -> None:
    """glibc raises its mmap threshold each time a large block is freed, after which
    multi-megabyte webhook bodies come from its heaps and stay resident (20 bodies of
    5 MB took the relay past 250 MB). Pinning the threshold at its 128 KiB default keeps
    large blocks mapped, so they go back to the system when freed (like setting
    MALLOC_MMAP_THRESHOLD_=131072)."""
    libc = ctypes.util.find_library("c")
    if libc is None:
        return
    try:
        ctypes.CDLL(libc).mallopt(-3, 128 * 1024)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc (musl, macOS): nothing to tune
        pass


def collect_garbage_less_often() -> None:
    """CPython looks for reference cycles whenever container objects allocated outnumber
    those freed by 700. Each delivery or request in flight holds a few dozen, so with a
    hundred in flight the count crosses 700 all the time, although reference counting
    frees nearly all of them, and the collector's passes become a large share of each
    delivery's CPU (BENCHMARKS.md, "The garbage collector"). Garbage in cycles is still
    collected, a little later."""
    _, *older = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, *older)
