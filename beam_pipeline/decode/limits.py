"""A worker process's limits on remote reads: how many at once, how many per host, and the bytes they may hold.

Remote reads (http(s), gs, s3) run as coroutines on fsspec's own event loop (`fsspec.asyn.get_loop()`, one IO
thread per process, where gcsfs, s3fs and fsspec's HTTP filesystem run every request anyway), so waiting on the
network costs no thread; the decode threads only decode. These limits are asyncio primitives of that loop, shared
by every DoFn instance and bundle thread of the process, as the pixel budget is shared by its decode threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator

import fsspec.asyn

# Measured (benchmarks/latency.py, benchmarks/README.md): with 40 ms to first byte, 16, 32 and 64 reads in flight
# per process labelled 131, 153 and 162 images/s on the one-process-per-core layout (75, 87, 104 on the in-memory
# one; the per-host cap bound first on that one host); each read in flight holds at most one image's bytes.
DEFAULT_READS_IN_FLIGHT = 64
# Per process: 32 keeps one host 40 ms away from slowing a 2-core process on a quiet machine (benchmarks/README.md,
# latency.py, in-memory layout: 8 gave 0.49 of the 0 ms rate, 16 gave 0.65, 32 gave 0.93); a job of 50 worker
# processes asks one host at most 1,600 at once (lower it for crawled manifests of small sites).
DEFAULT_REQUESTS_PER_HOST = 32
# Bytes that finished reads may hold until their image is decoded, per process. Reads stop starting while it is
# spent (a read bigger than the whole budget waits until it is alone), so fast storage and slow decoding cannot
# pile images up in memory. Reads in progress are bounded by the count above and --max-bytes each.
READ_BYTES_BUDGET = 256_000_000


class ReadLimits:
    """Reads in flight (all hosts), requests in flight per http(s) host, and bytes held by finished reads.

    Every method but `release` runs on fsspec's loop; `release` may be called from any thread.
    """

    def __init__(self, reads: int, per_host: int, budget: int = READ_BYTES_BUDGET):
        self._reads = reads
        self._per_host = per_host
        self._capacity = budget
        self._free = budget
        self._slots: asyncio.Semaphore | None = None
        self._hosts: dict[str, asyncio.Semaphore] = {}
        self._changed: asyncio.Condition | None = None

    @contextlib.asynccontextmanager
    async def request(self, host: str | None) -> AsyncIterator[None]:
        """One request: a slot of its host's (http(s) only), then one of the process's."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self._reads)
        host_slots = None
        if host is not None:
            host_slots = self._hosts.setdefault(host, asyncio.Semaphore(self._per_host))
        async with host_slots or contextlib.nullcontext(), self._slots:
            yield

    async def hold(self, size: int) -> int:
        """Waits until `size` bytes fit in the budget and takes them; returns what to `release` later."""
        if self._changed is None:
            self._changed = asyncio.Condition()
        wanted = min(size, self._capacity)
        async with self._changed:
            await self._changed.wait_for(lambda: self._free >= wanted)
            self._free -= wanted
        return wanted

    def release(self, held: int) -> None:
        """Gives back what `hold` took; thread-safe."""
        fsspec.asyn.get_loop().call_soon_threadsafe(lambda: asyncio.ensure_future(self._give_back(held)))

    async def _give_back(self, held: int) -> None:
        assert self._changed is not None
        async with self._changed:
            self._free += held
            self._changed.notify_all()


@functools.cache
def limits_for(reads: int, per_host: int) -> ReadLimits:
    """The process's limits for these settings (one job per process: in practice one instance)."""
    return ReadLimits(reads, per_host)
