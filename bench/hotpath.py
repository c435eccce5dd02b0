"""The uncontended checkout, this tree against an older commit, in one run (issue 18, item 8).

``python -m bench.hotpath --against 7c02a3d`` extracts the older commit's ``geventconnpool``
with ``git archive`` into a temporary directory, starts one child process per tree (each
imports its own copy), and has them time ``with pool.get(): pass`` on a two-connection pool
in batches of ``--loops`` (50,000), alternating A B, B A, ... for ``--rounds`` rounds, so that a
drift of the machine hits both. A batch is timed in CPU time of the child's thread
(``time.thread_time``): on a shared machine, wall time also counts the time the child waited
for a CPU, which is noise here. It prints the best and the median per checkout and the ratio
ours / theirs (below 1.0: ours is faster). ``make bench`` runs it as a step.

No server and no socket: the connections are plain objects, so the figure is the pool's own
bookkeeping (take, put back, the context manager), the part a refactor can make slower.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
#: The commit before the state refactor (issue 18 measured 1.23 us there, 1.55 us after it).
BASELINE = "7c02a3d"

CHILD = r"""
import gc, sys, time
from geventconnpool import ConnectionPool

class Pool(ConnectionPool):
    def _new_connection(self):
        return object()

pool = Pool(2)
for _ in range(1000):
    with pool.get():
        pass
sys.stdout.write("ready\n")
sys.stdout.flush()
get, clock = pool.get, time.thread_time
for line in sys.stdin:
    n = int(line)
    gc.collect()
    start = clock()
    for _ in range(n):
        with get():
            pass
    sys.stdout.write(f"{(clock() - start) / n * 1e9:.1f}\n")
    sys.stdout.flush()
"""


def extract(commit: str, into: Path) -> Path:
    """``geventconnpool`` of ``commit`` under ``into`` (``git archive``); returns its root."""
    archive = into / "tree.tar"
    with archive.open("wb") as out:
        subprocess.run(
            ["git", "archive", commit, "geventconnpool"], cwd=REPO, stdout=out, check=True
        )
    with tarfile.open(archive) as tar:
        try:
            tar.extractall(into / "tree", filter="data")
        except TypeError:  # a Python without extraction filters (3.10 before 3.10.12)
            tar.extractall(into / "tree")  # our own repository's archive
    return into / "tree"


class Child:
    """One tree's timing process: ``time(n)`` is the mean ns per checkout of a batch of n."""

    def __init__(self, root: Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(root), "PYTHONHASHSEED": "0"}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD],
            cwd=root,  # sys.path[0] is the cwd with -c: this tree's geventconnpool comes first
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        ready = self.proc.stdout.readline().strip()
        if ready != "ready":
            raise RuntimeError(f"the child for {root} did not start")

    def time(self, n: int) -> float:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{n}\n")
        self.proc.stdin.flush()
        return float(self.proc.stdout.readline())

    def close(self) -> None:
        """End the child (its stdin closes) and wait for it."""
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe is not None:
                pipe.close()
        self.proc.wait(10)


def measure(ours: Path, theirs: Path, rounds: int, loops: int) -> dict[str, list[float]]:
    """Per-checkout ns of each batch, for both trees, alternating which goes first."""
    children = {"ours": Child(ours), "theirs": Child(theirs)}
    times: dict[str, list[float]] = {"ours": [], "theirs": []}
    try:
        for i in range(rounds):
            order = ("ours", "theirs") if i % 2 == 0 else ("theirs", "ours")
            for name in order:
                times[name].append(children[name].time(loops))
    finally:
        for child in children.values():
            child.close()
    return times


def report(times: dict[str, list[float]], against: str, rounds: int, loops: int) -> str:
    ours, theirs = times["ours"], times["theirs"]
    best = min(ours) / min(theirs)
    median = statistics.median(ours) / statistics.median(theirs)
    return "\n".join(
        [
            f"uncontended checkout (`with pool.get(): pass`, 2 connections), "
            f"{rounds} x {loops:,} alternating",
            f"  this tree : best {min(ours):7.1f} ns   median {statistics.median(ours):7.1f} ns",
            f"  {against:<10}: best {min(theirs):7.1f} ns   "
            f"median {statistics.median(theirs):7.1f} ns",
            f"  ratio ours/theirs: best {best:.3f}x   median {median:.3f}x",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__)
    p.add_argument("--against", default=BASELINE, help=f"the older commit (default {BASELINE})")
    p.add_argument("--rounds", type=int, default=15, help="batches per tree (default 15)")
    p.add_argument("--loops", type=int, default=50_000, help="checkouts per batch (50,000)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hotpath-") as tmp:
        theirs = extract(args.against, Path(tmp))
        times = measure(REPO, theirs, args.rounds, args.loops)
    print(report(times, args.against, args.rounds, args.loops))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
