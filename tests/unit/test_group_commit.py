"""GroupCommit (relay.outbox.runner): batching on the writer thread, beside a busy loop."""

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from relay.outbox.runner import GroupCommit


@pytest.fixture
def writer():
    executor = ThreadPoolExecutor(1)
    yield executor
    executor.shutdown()


def test_next_write_starts_while_the_event_loop_is_busy(writer):
    """The writer thread queues the next batch itself: a loop busy for a long stretch (a
    burst of requests) does not hold the writes back until it comes round."""
    first_running, release_first = threading.Event(), threading.Event()
    second_written = threading.Event()
    batches = []

    def write(items):
        batches.append(list(items))
        if items == ["a"]:
            first_running.set()
            release_first.wait(5)
        else:
            second_written.set()
        return [item.upper() for item in items]

    async def main():
        commit = GroupCommit(lambda: writer, write)
        a = asyncio.ensure_future(commit.submit("a"))
        await asyncio.sleep(0)  # a's task submits
        assert first_running.wait(5)
        b = asyncio.ensure_future(commit.submit("b"))
        c = asyncio.ensure_future(commit.submit("c"))
        await asyncio.sleep(0)  # b and c join the queue behind a's write
        release_first.set()
        # The loop is now busy (blocked here) and never runs: b and c are written anyway.
        assert second_written.wait(5), "the second write waited for the event loop"
        assert await asyncio.gather(a, b, c) == ["A", "B", "C"]
        await commit.drain()

    asyncio.run(main())
    assert batches == [["a"], ["b", "c"]]


def test_a_failed_write_fails_its_whole_batch_and_the_next_one_runs(writer):
    def write(items):
        if "bad" in items:
            raise RuntimeError("disk full")
        return list(items)

    async def main():
        commit = GroupCommit(lambda: writer, write)
        results = await asyncio.gather(commit.submit("bad"), return_exceptions=True)
        assert isinstance(results[0], RuntimeError)
        assert await commit.submit("good") == "good"

    asyncio.run(main())


def test_a_timed_out_wait_leaves_the_write_going(writer):
    release = threading.Event()
    written = []

    def write(items):
        release.wait(5)
        written.extend(items)
        return list(items)

    async def main():
        commit = GroupCommit(lambda: writer, write)
        with pytest.raises(TimeoutError):
            await commit.submit("slow", timeout=0.05)
        release.set()
        await commit.drain()

    asyncio.run(main())
    assert written == ["slow"]
