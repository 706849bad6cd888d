"""The local process pool of the stages: results in order, and no worker outlives its parent."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from facekit.stages.shard_map import process_map


def _square(x: int) -> int:
    return x * x


def test_results_come_back_in_order_from_the_pool_and_inline() -> None:
    calls = [(i,) for i in range(7)]
    assert list(process_map(2)(_square, calls)) == [i * i for i in range(7)]
    assert list(process_map(1)(_square, calls)) == [i * i for i in range(7)]


def _alive(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie (a killed orphan waits for init to reap it)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


PARENT = textwrap.dedent(
    """
    import os, time
    from facekit.stages.shard_map import process_map

    def slow(i):
        os.write(1, b"%d\\n" % os.getpid())  # one write: the two workers' lines never interleave
        time.sleep(120)

    list(process_map(2)(slow, [(0,), (1,), (2,), (3,)]))
    """
)


def test_pool_workers_die_when_their_parent_is_killed() -> None:
    """kill -9 of the process that owns the pool takes every worker with it within seconds."""
    workers: set[int] = set()
    with subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True) as parent:
        try:
            workers = {int(parent.stdout.readline()) for _ in range(2)}
            assert len(workers) == 2 and all(_alive(pid) for pid in workers)
            parent.send_signal(signal.SIGKILL)
            parent.wait()
            deadline = time.monotonic() + 5
            while any(_alive(pid) for pid in workers) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not any(_alive(pid) for pid in workers), workers
        finally:
            parent.kill()
            for pid in filter(_alive, workers):
                os.kill(pid, signal.SIGKILL)
