"""Batching: inputs that share a route run together, up to the model's max batch, and come back in order.

`run_batches` serves a whole request at once (a caller's images, grouped by route). `StreamBatcher` serves callers
that submit one image at a time: a worker thread collects images per route until the batch is full or the oldest
has waited `max_wait_ms`, then runs them. A device out-of-memory error splits the batch in half and retries. An
`SppnetError` (a failure the user can fix) fails only its batch's images; anything else is a bug: logged with its
traceback and raised.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np

from sppnet.core.errors import InvalidInput, OutOfMemory, SppnetError
from sppnet.core.preprocess import to_chw_batch
from sppnet.engines.backends.base import Runner
from sppnet.engines.routing import Route

Outcome = np.ndarray | Exception
log = logging.getLogger("sppnet.engines")


@dataclass
class Item:
    """One prepared input (mean-subtracted (h, w, 3) float32) and its route."""

    view: np.ndarray
    route: Route


@dataclass
class Stats:
    """What the dispatcher did: batches run, images, out-of-memory retries."""

    batches: int = 0
    images: int = 0
    oom_retries: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, batches: int = 0, images: int = 0, oom_retries: int = 0) -> None:
        with self.lock:
            self.batches += batches
            self.images += images
            self.oom_retries += oom_retries


class Executor:
    """Runs same-route chunks on the right runner; shared by the one-shot and the streaming paths."""

    def __init__(
        self, runners: dict[str, Runner], max_batch: Callable[[Route], int], input_name: str, output_name: str
    ) -> None:
        self.runners, self.max_batch = runners, max_batch
        self.input_name, self.output_name = input_name, output_name
        self.stats = Stats()

    def run_group(self, route: Route, views: Sequence[np.ndarray]) -> list[Outcome]:
        """Logits (or the error) for each view of one route, in order, in chunks of at most the max batch."""
        limit = max(1, self.max_batch(route))
        out: list[Outcome] = []
        for start in range(0, len(views), limit):
            out += self._run_chunk(route, views[start : start + limit])
        return out

    def _run_chunk(self, route: Route, views: Sequence[np.ndarray]) -> list[Outcome]:
        runner = self.runners[route.model]
        try:
            logits = runner.infer({self.input_name: to_chw_batch(views)}, route.profile)[self.output_name]
        except OutOfMemory as e:
            if len(views) == 1:
                return [e]
            self.stats.add(oom_retries=1)
            half = len(views) // 2
            return self._run_chunk(route, views[:half]) + self._run_chunk(route, views[half:])
        except SppnetError as e:  # a failure the user can fix fails this batch's images, not the others
            return [e] * len(views)
        except Exception:
            log.exception("bug while running a batch of %d on %s (profile %d)", len(views), route.model, route.profile)
            raise
        self.stats.add(batches=1, images=len(views))
        return list(logits)


def run_batches(executor: Executor, items: Sequence[Item | Exception]) -> list[Outcome]:
    """Run every item, batched by route; errors already in `items` pass through; results in input order."""
    results: list[Outcome | None] = [item if isinstance(item, Exception) else None for item in items]
    groups: dict[tuple[str, int, int, int], list[int]] = {}
    for index, item in enumerate(items):
        if isinstance(item, Item):
            groups.setdefault(item.route.key(), []).append(index)
    for indices in groups.values():
        route = items[indices[0]].route  # type: ignore[union-attr]
        outcomes = executor.run_group(route, [items[i].view for i in indices])  # type: ignore[union-attr]
        for index, outcome in zip(indices, outcomes, strict=True):
            results[index] = outcome
    return results  # type: ignore[return-value]


class StreamBatcher:
    """Collects single submissions into per-route batches on a worker thread (full batch or `max_wait_ms`)."""

    def __init__(self, executor: Executor, max_wait_ms: float = 2.0) -> None:
        self.executor = executor
        self.max_wait = max_wait_ms / 1000.0
        self._pending: dict[tuple[str, int, int, int], list[tuple[Item, Future, float]]] = {}
        self._cond = threading.Condition()
        self._closed = False
        self._worker = threading.Thread(target=self._loop, name="sppnet-batcher", daemon=True)
        self._worker.start()

    def submit(self, item: Item) -> Future:
        """A future that resolves to the item's logits (or raises its error)."""
        future: Future = Future()
        with self._cond:
            if self._closed:
                raise InvalidInput("the batcher is closed: create a new Runtime")
            self._pending.setdefault(item.route.key(), []).append((item, future, time.monotonic()))
            self._cond.notify()
        return future

    def close(self) -> None:
        """Run what is pending, then stop the worker."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._worker.join()

    def _take_ready(self) -> list[tuple[Item, Future, float]] | None:
        """A batch ready to run (full, waited long enough, or closing), else None; call with the lock held."""
        now = time.monotonic()
        for key, queue in self._pending.items():
            limit = max(1, self.executor.max_batch(queue[0][0].route))
            if len(queue) >= limit or now - queue[0][2] >= self.max_wait or self._closed:
                batch, rest = queue[:limit], queue[limit:]
                if rest:
                    self._pending[key] = rest
                else:
                    del self._pending[key]
                return batch
        return None

    def _next_deadline(self) -> float | None:
        if not self._pending:
            return None
        return min(queue[0][2] for queue in self._pending.values()) + self.max_wait - time.monotonic()

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._take_ready()
                while batch is None:
                    if self._closed and not self._pending:
                        return
                    self._cond.wait(timeout=self._next_deadline())
                    batch = self._take_ready()
            route = batch[0][0].route
            try:
                outcomes: list[Outcome] = self.executor.run_group(route, [item.view for item, _, _ in batch])
            except Exception as bug:  # logged by run_group; each caller gets it with its traceback
                outcomes = [bug] * len(batch)
            for (_, future, _), outcome in zip(batch, outcomes, strict=True):
                if isinstance(outcome, Exception):
                    future.set_exception(outcome)
                else:
                    future.set_result(outcome)
