"""Dynamic batching: concurrent requests become one generate call.

Requests wait in an asyncio queue; the batching task takes the first, then whatever arrives within
`batch_timeout` seconds (or is already queued) up to `max_batch_size`, and hands the batch to one generation
thread. While that thread generates, new requests queue up and form the next batch, so a busy server batches
without waiting at all. Requests that differ in what generation needs (max new tokens, decoding strategy) go in
separate calls of the same round. Greedy decoding of a left-padded batch gives each request the SQL it gets
alone (the EX callback relies on the same property; tests/test_serve.py checks it over HTTP).

Written by hand: LitServe's batching lives in its worker processes, one per endpoint, each loading its own copy
of the model (see docs/serve.md); these 100 lines keep one model and one batch for every endpoint.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field


@dataclass
class Job:
    ids: list[int]
    max_new_tokens: int
    strategy: str | None = None  # None: the run's eval.decoding
    db_file: str = ""  # where an executing strategy runs its candidates
    queued_at: float = field(default_factory=time.perf_counter)


@dataclass
class Done:
    prediction: object  # decoding.Prediction
    batch_size: int  # requests in the generate call that answered this one
    queue_s: float
    generation_s: float


@dataclass
class Counters:
    requests: int = 0  # jobs answered
    generate_calls: int = 0
    largest_batch: int = 0

    def as_dict(self) -> dict:
        return {"generated_requests": self.requests, "generate_calls": self.generate_calls,
                "largest_batch": self.largest_batch}


class Batcher:
    """`await submit(job)` returns its `Done`; `generate(sources, max_new_tokens, strategy, db_files)` is the
    generator's (one thread, so the model is never entered twice at once)."""

    def __init__(self, generate, max_batch_size: int, batch_timeout: float) -> None:
        self.generate = generate
        self.max_batch_size = max(1, int(max_batch_size))
        self.batch_timeout = max(0.0, float(batch_timeout))
        self.counters = Counters()
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="text2sql-generate")

    def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.get_running_loop().create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._thread.shutdown(wait=True)

    async def submit(self, job: Job) -> Done:
        future = asyncio.get_running_loop().create_future()
        await self._queue.put((job, future))
        return await future

    async def _collect(self) -> list:
        batch = [await self._queue.get()]
        deadline = time.monotonic() + self.batch_timeout
        while len(batch) < self.max_batch_size:
            try:
                batch.append(self._queue.get_nowait())
                continue
            except asyncio.QueueEmpty:
                pass
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                batch.append(await asyncio.wait_for(self._queue.get(), remaining))
            except (asyncio.TimeoutError, TimeoutError):
                break
        return [(job, fut) for job, fut in batch if not fut.done()]  # a timed-out request is not generated

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            batch = await self._collect()
            groups: dict[tuple, list] = {}
            for job, fut in batch:
                groups.setdefault((job.max_new_tokens, job.strategy), []).append((job, fut))
            for (max_new_tokens, strategy), group in groups.items():
                start = time.perf_counter()
                try:
                    preds = await loop.run_in_executor(
                        self._thread, self.generate, [j.ids for j, _ in group], max_new_tokens, strategy,
                        [j.db_file for j, _ in group])
                except Exception as err:  # noqa: BLE001 - every waiting request gets the failure, the loop lives
                    for _, fut in group:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                took = time.perf_counter() - start
                self.counters.generate_calls += 1
                self.counters.requests += len(group)
                self.counters.largest_batch = max(self.counters.largest_batch, len(group))
                for (job, fut), pred in zip(group, preds):
                    if not fut.done():
                        fut.set_result(Done(pred, len(group), start - job.queued_at, took))
