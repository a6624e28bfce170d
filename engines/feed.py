"""The GPU-fed path: a stream of images kept flowing into the models' device.

Files are decoded in a pool of worker processes (uint8, a quarter of float32's bytes); each image's geometry (the
policy's resize and crop, the fit into the served range, the route) is planned from its size alone; images are
batched per route up to the model's batch limit; a batch's uint8 pixels go into pinned host memory as one ragged
buffer, are copied to the device on a copy stream and resized, cropped, mean-subtracted and laid out as NCHW
float32 on the device, all images of the batch in one pass; the model runs on a compute stream and its logits come
back into pinned memory. Two (`depth`) buffer sets alternate, so the host packs batch k+1 and its copy overlaps
batch k's compute; the host only waits when it needs a buffer set back.

Device preprocessing is Caffe's, as `sppnet.core.preprocess` does it on the CPU: bilinear resampling with
half-pixel centres clamped at the edges (cv2 INTER_LINEAR), the constant (or resized image) mean subtracted after
the last crop, then the input scale; it equals the CPU path to float rounding (the tests bound it). Decoded
images are rounded to 8 bits for the upload: exact for 8-bit files; 16-bit and float images lose under half a
grey level. On the CPU the same code runs synchronously (the tests' path); the streams, pinned memory and overlap
are unverified until a GPU runs them (`python -m sppnet.engines.gpu_check`).
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import multiprocessing
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from sppnet.core.errors import BadImage, OutOfMemory, SppnetError, one_line
from sppnet.core.images import DEFAULT_MAX_PIXELS, load_bgr
from sppnet.core.preprocess import Preprocess
from sppnet.engines.routing import Plan, Policy, Route, plan_view, whole

if TYPE_CHECKING:
    import torch

    from sppnet.engines.runtime import Result, Runtime

META = 7  # per image: offset, source height, width, resized height, width, crop top, left
PLAN_CACHE = 65536  # plans remembered (by size and policy)
PACKERS = min(8, os.cpu_count() or 1)  # threads copying a batch's pixels into pinned memory (numpy frees the GIL)
PACK_SPLIT = 8 << 20  # bytes of a batch above which the copy is split between the threads


# --------------------------------------------------------------------------- device preprocessing (torch)


def _taps(source: torch.Tensor, resized: torch.Tensor, start: torch.Tensor, length: int) -> tuple[torch.Tensor, ...]:
    """For each image, the two source cells and the second one's weight of `length` output cells from `start` on an
    axis of `source` cells resized to `resized` (cv2 INTER_LINEAR: x = (d + 0.5) * source / resized - 0.5 in
    single precision, clamped to the first and last cell)."""
    import torch

    d = start[:, None].double() + torch.arange(length, device=source.device, dtype=torch.float64)
    x = ((d + 0.5) * (source.double() / resized.double())[:, None] - 0.5).float().clamp_min(0.0)
    first = x.floor()
    weight = x - first
    last = (source - 1)[:, None]
    i0 = first.long()
    weight = torch.where(i0 >= last, torch.zeros_like(weight), weight)
    i0 = torch.minimum(i0, last)
    return i0, torch.minimum(i0 + 1, last), weight


def resample(flat: torch.Tensor, meta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bilinear resize and crop of a batch of HWC images packed in one flat buffer -> (B, height, width, 3) float32.

    `meta` is (B, 7) int64: per image the offset of its first value in `flat` (a multiple of 3), its height and
    width, the size it is resized to and the crop's top and left in the resized image; every crop is `height` x
    `width`. Each output pixel reads its four source pixels as rows of 3 values (one `index_select` each).
    """
    offset, src_h, src_w, size_h, size_w, top, left = meta.unbind(1)
    y0, y1, wy = _taps(src_h, size_h, top, height)
    x0, x1, wx = _taps(src_w, size_w, left, width)
    pixels = flat.view(-1, 3)
    first = (offset // 3)[:, None]
    rows = [(first + y * src_w[:, None])[:, :, None] for y in (y0, y1)]  # (B, H, 1) first pixel of each row

    def at(row: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        index = (row + x[:, None, :]).reshape(-1)
        return pixels.index_select(0, index).view(len(meta), height, width, 3).float()

    wx, wy = wx[:, None, :, None], wy[:, :, None, None]
    upper = at(rows[0], x0) * (1 - wx) + at(rows[0], x1) * wx  # along rows first, as cv2
    lower = at(rows[1], x0) * (1 - wx) + at(rows[1], x1) * wx
    return upper * (1 - wy) + lower * wy


class DevicePreprocess:
    """Caffe's preprocessing on a device: planned stages -> a (B, 3, H, W) float32 batch, mean off, scaled."""

    def __init__(self, pre: Preprocess, device: str) -> None:
        import torch

        self.pre, self.device = pre, torch.device(device)
        self._means: dict[tuple[int, int], torch.Tensor] = {}

    def mean(self, height: int, width: int) -> torch.Tensor:
        """The mean to subtract from an HWC (height, width, 3) batch, on the device (cached per size)."""
        import torch

        key = (height, width) if self.pre.mean_image is not None else (0, 0)
        if key not in self._means:
            self._means[key] = torch.as_tensor(self.pre.mean_for(height, width), device=self.device)
        return self._means[key]

    def _finish(self, hwc: torch.Tensor) -> torch.Tensor:
        centred = hwc - self.mean(hwc.shape[1], hwc.shape[2])
        return centred if self.pre.scale == 1.0 else centred * self.pre.scale

    def batch(
        self, flat: torch.Tensor, meta: torch.Tensor, plans: Sequence[Plan], out: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Every planned image of one route, resampled from `flat`, into `out` (or a new tensor)."""
        import torch

        height, width = plans[0].size
        if out is None:
            out = torch.empty((len(plans), 3, height, width), dtype=torch.float32, device=self.device)
        if all(p.second is None and p.first == whole(height, width) and p.source == (height, width) for p in plans):
            # already the input size (a fixed-scale stream): no resampling, packed back to back in `flat`
            hwc = flat[: len(plans) * height * width * 3].view(len(plans), height, width, 3).float()
            out.copy_(self._finish(hwc).permute(0, 3, 1, 2))
            return out
        single = [i for i, p in enumerate(plans) if p.second is None]
        if len(single) == len(plans):
            out.copy_(self._finish(resample(flat, meta, height, width)).permute(0, 3, 1, 2))
            return out
        if single:
            index = torch.tensor(single, device=self.device)
            out[index] = self._finish(resample(flat, meta[index], height, width)).permute(0, 3, 1, 2)
        for i, plan in enumerate(plans):
            if plan.second is not None:  # policy stage, mean off, then the fit: as `routing.prepare` orders them
                first = self._finish(resample(flat, meta[i : i + 1], plan.first.height, plan.first.width))
                second = plan.second
                row = [0, plan.first.height, plan.first.width, *second.resize, second.top, second.left]
                fitted = resample(first.reshape(-1), torch.tensor([row], device=self.device), height, width)
                out[i] = fitted[0].permute(2, 0, 1)
        return out


def stage_meta(offset: int, plan: Plan) -> list[int]:
    """The `resample` metadata row of a plan's first stage for pixels stored at `offset`."""
    first = plan.first
    return [offset, *plan.source, *first.resize, first.top, first.left]


# --------------------------------------------------------------------------- decoding in worker processes


def decode_uint8(path: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray | str:
    """A file as BGR uint8 (H, W, 3), or its one-line error (worker processes return errors as text)."""
    try:
        pixels = load_bgr(path, max_pixels=max_pixels)
    except SppnetError as e:
        return one_line(e)
    return np.rint(pixels, out=pixels).astype(np.uint8)


class Decoder:
    """Decodes files in `workers` processes, results in input order, at most `window` files in flight."""

    def __init__(self, workers: int, max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.workers, self.max_pixels = max(1, workers), max_pixels
        self.window = 8 * self.workers
        self._pool: concurrent.futures.ProcessPoolExecutor | None = None

    def _executor(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._pool is None:
            context = multiprocessing.get_context("spawn")  # a forked CUDA process is unusable in the child
            self._pool = concurrent.futures.ProcessPoolExecutor(self.workers, mp_context=context)
        return self._pool

    def map(self, paths: Iterable[str]) -> Iterator[np.ndarray | str]:
        """Each path's pixels or error text, in order."""
        pool = self._executor()
        queue: collections.deque[concurrent.futures.Future] = collections.deque()
        for path in paths:
            queue.append(pool.submit(decode_uint8, path, self.max_pixels))
            if len(queue) >= self.window:
                yield queue.popleft().result()
        while queue:
            yield queue.popleft().result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


# --------------------------------------------------------------------------- the feed


@dataclass
class Job:
    """One image on its way: its index in the request, what the caller passed, its pixels and plan."""

    index: int
    image: Any
    pixels: np.ndarray
    plan: Plan


@dataclass
class Slot:
    """One buffer set: pinned uint8 pixels and metadata in, logits out, and the batch now using it."""

    host_pixels: Any = None
    host_meta: Any = None
    host_logits: Any = None
    device_pixels: Any = None
    device_meta: Any = None
    copied: Any = None
    done: Any = None
    jobs: list[Job] = field(default_factory=list)
    logits: Any = None  # CPU: the batch's logits tensor
    error: Exception | None = None


ModelCall = Callable[[Any, int], Any]


def model_call(runner: Any, input_name: str, output_name: str) -> tuple[ModelCall, Callable[[int], Any]]:
    """(run, input buffer) for a runner: device tensors for compiled packages and ONNX Runtime, numpy otherwise."""
    import torch

    if hasattr(runner, "run") and hasattr(runner, "input_buffer"):
        return (lambda x, profile: runner.run(x)), runner.input_buffer
    if hasattr(runner, "infer_tensor"):
        return (lambda x, profile: runner.infer_tensor(x)), lambda batch: None

    def through_host(x: torch.Tensor, profile: int) -> torch.Tensor:
        logits = runner.infer({input_name: x.cpu().numpy()}, profile)[output_name]
        return torch.from_numpy(logits).to(x.device)

    return through_host, lambda batch: None


def runner_device(runner: Any) -> str:
    """Where a runner wants its input tensors: the GPU of a compiled package or CUDA session, else the CPU."""
    if getattr(runner, "on_gpu", False):  # a compiled package on a GPU
        return str(runner.device)
    if getattr(runner, "on_cuda", False):  # an ONNX Runtime session on its CUDA provider
        return f"cuda:{runner.device_id}"
    return "cpu"


class DeviceFeed:
    """Serves streams of images for a `Runtime` through the GPU-fed path (see the module docstring).

    Args:
        runtime: an open Runtime (its models, runners, policy, preprocessing and top-k).
        workers: decoding processes for files (default: the CPU count, up to 16).
        depth: buffer sets in flight (2: double buffering).
        batch: a cap on the batch size below each model's own limit.
        pending: images held back waiting for their route's batch to fill before the oldest route is run anyway.
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        workers: int | None = None,
        depth: int = 2,
        batch: int | None = None,
        pending: int = 4096,
    ) -> None:
        import torch

        self.rt = runtime
        card = runtime.models.card
        runners = runtime.runners
        self.device = runner_device(next(iter(runners.values())))
        self.calls = {name: model_call(r, card.input_name, card.output_name) for name, r in runners.items()}
        self.pre = DevicePreprocess(runtime.pre, self.device)
        self.served = runtime.models.served
        self.decoder = Decoder(workers or min(16, os.cpu_count() or 1), runtime.max_pixels)
        self.slots = [Slot() for _ in range(max(1, depth))]
        self.batch, self.pending = batch, pending
        self.cuda = self.device.startswith("cuda")
        self.copy_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self.compute_stream = torch.cuda.Stream(self.device) if self.cuda else None
        self._next = 0
        self._plans: dict[tuple[int, int, Policy], Plan] = {}
        self._packers = concurrent.futures.ThreadPoolExecutor(PACKERS, thread_name_prefix="sppnet-pack")
        self.stats = {"batches": 0, "images": 0, "two_stage": 0}

    # ---- the stream

    def run(self, images: Sequence[Any]) -> list[Result]:
        """Results for `images` (paths or BGR uint8 arrays), in order; a bad image gets its own error."""
        results: list[Result | None] = [None] * len(images)
        groups: dict[tuple[str, int, int, int], list[Job]] = {}
        waiting = 0
        for index, image, pixels in self._decoded(images):
            if isinstance(pixels, Exception):
                results[index] = self._failed(index, image, pixels, None)
                continue
            try:
                plan = self._plan(pixels.shape[0], pixels.shape[1])
            except SppnetError as e:
                results[index] = self._failed(index, image, e, None)
                continue
            key = plan.route.key()
            group = groups.setdefault(key, [])
            group.append(Job(index, image, pixels, plan))
            waiting += 1
            if len(group) >= self._limit(plan.route):
                waiting -= len(group)
                self._launch(groups.pop(key), results)
            elif waiting > self.pending:
                oldest = next(iter(groups))
                waiting -= len(groups[oldest])
                self._launch(groups.pop(oldest), results)
        for jobs in groups.values():
            self._launch(jobs, results)
        for slot in self.slots:
            self._harvest(slot, results)
        return results  # type: ignore[return-value]

    def _plan(self, height: int, width: int) -> Plan:
        """`plan_view`, remembered per size and policy (a plan depends on nothing else)."""
        key = (height, width, self.rt.policy)
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= PLAN_CACHE:
                self._plans.clear()
            plan = self._plans[key] = plan_view(height, width, self.rt.policy, self.rt.pre, self.rt.models, self.served)
        return plan

    def _limit(self, route: Route) -> int:
        limit = max(1, self.rt.executor.max_batch(route))
        return min(limit, self.batch) if self.batch else limit

    def _decoded(self, images: Sequence[Any]) -> Iterator[tuple[int, Any, np.ndarray | Exception]]:
        """(index, image, uint8 pixels or the error) in order; files through the worker processes."""
        paths = [os.fspath(image) for image in images if not isinstance(image, np.ndarray)]
        decoded = self.decoder.map(paths) if paths else iter(())
        for index, image in enumerate(images):
            if isinstance(image, np.ndarray):
                yield index, image, _checked(image)
            else:
                pixels = next(decoded)
                yield index, image, BadImage(pixels) if isinstance(pixels, str) else pixels

    # ---- batches

    def _launch(self, jobs: list[Job], results: list[Result | None]) -> None:
        """Run one route's jobs in batches of its limit, each in the next buffer set."""
        limit = self._limit(jobs[0].plan.route)
        for start in range(0, len(jobs), limit):
            slot = self.slots[self._next % len(self.slots)]
            self._next += 1
            self._harvest(slot, results)  # the buffer set's previous batch must be done before it is refilled
            self._enqueue(slot, jobs[start : start + limit])

    def _enqueue(self, slot: Slot, jobs: list[Job]) -> None:
        import torch

        slot.jobs, slot.error, slot.logits = jobs, None, None
        route = jobs[0].plan.route
        self.stats["batches"] += 1
        self.stats["images"] += len(jobs)
        self.stats["two_stage"] += sum(job.plan.second is not None for job in jobs)
        total = sum(job.pixels.size for job in jobs)
        run, buffer = self.calls[route.model]
        try:
            self._reserve(slot, total, len(jobs))
            offsets = np.cumsum([0] + [job.pixels.size for job in jobs[:-1]]).tolist()
            self._pack(jobs, offsets, slot.host_pixels.numpy(), total)
            rows = [stage_meta(offset, job.plan) for offset, job in zip(offsets, jobs, strict=True)]
            meta = slot.host_meta[: len(jobs)]
            meta.numpy()[:] = rows
            if not self.cuda:
                with _one_thread():  # memory-bound; more threads fight ONNX Runtime's spinning pool for the cores
                    x = self.pre.batch(slot.host_pixels[:total], meta, [j.plan for j in jobs])
                slot.logits = self._run(run, x, route.profile)
                return
            assert self.copy_stream is not None and self.compute_stream is not None
            with torch.cuda.stream(self.copy_stream):
                slot.device_pixels[:total].copy_(slot.host_pixels[:total], non_blocking=True)
                slot.device_meta[: len(jobs)].copy_(meta, non_blocking=True)
                slot.copied.record(self.copy_stream)
            with torch.cuda.stream(self.compute_stream):
                self.compute_stream.wait_event(slot.copied)
                plans = [j.plan for j in jobs]
                x = self.pre.batch(slot.device_pixels[:total], slot.device_meta[: len(jobs)], plans, buffer(len(jobs)))
                logits = self._run(run, x, route.profile)
                slot.host_logits[: len(jobs)].copy_(logits, non_blocking=True)
                slot.done.record(self.compute_stream)
        except SppnetError as e:  # this batch's images fail, the stream goes on
            slot.error = e
            if self.cuda:  # its pinned buffers may still be in a copy: wait before they are refilled
                self.copy_stream.synchronize()  # type: ignore[union-attr]
                self.compute_stream.synchronize()  # type: ignore[union-attr]
        except BaseException:
            slot.jobs = []  # a bug: raised to the caller, and no later run may harvest this batch
            raise

    def _pack(self, jobs: list[Job], offsets: list[int], pixels: np.ndarray, total: int) -> None:
        """Copy every job's pixels into the flat (pinned) buffer at its offset, in threads for large batches."""

        def copy(part: range) -> None:
            for i in part:
                pixels[offsets[i] : offsets[i] + jobs[i].pixels.size] = jobs[i].pixels.reshape(-1)

        parts = min(PACKERS, len(jobs), max(1, total // PACK_SPLIT))
        if parts <= 1:
            copy(range(len(jobs)))
            return
        step = -(-len(jobs) // parts)
        for done in [self._packers.submit(copy, range(i, min(i + step, len(jobs)))) for i in range(0, len(jobs), step)]:
            done.result()

    def _run(self, run: ModelCall, x: Any, profile: int) -> Any:
        """The model on one batch; a device out-of-memory error halves the batch and tries again."""
        import torch

        try:
            return run(x, profile)
        except OutOfMemory:
            if len(x) == 1:
                raise
            half = len(x) // 2
            return torch.cat([self._run(run, x[:half], profile), self._run(run, x[half:], profile)])

    def _reserve(self, slot: Slot, pixel_bytes: int, images: int) -> None:
        """Grow a buffer set to hold `pixel_bytes` of pixels and `images` rows (pinned and on the device, on a GPU)."""
        import torch

        classes = self.rt.models.card.num_classes
        if slot.host_pixels is None or slot.host_pixels.numel() < pixel_bytes or slot.host_meta.shape[0] < images:
            capacity = max(pixel_bytes, 2 * (slot.host_pixels.numel() if slot.host_pixels is not None else 0))
            rows = max(images, 2 * (slot.host_meta.shape[0] if slot.host_meta is not None else 0))
            pin = self.cuda
            try:
                slot.host_pixels = torch.empty(capacity, dtype=torch.uint8, pin_memory=pin)
                slot.host_meta = torch.empty((rows, META), dtype=torch.int64, pin_memory=pin)
                if self.cuda:
                    slot.host_logits = torch.empty((rows, classes), dtype=torch.float32, pin_memory=True)
                    slot.device_pixels = torch.empty(capacity, dtype=torch.uint8, device=self.device)
                    slot.device_meta = torch.empty((rows, META), dtype=torch.int64, device=self.device)
                    slot.copied, slot.done = torch.cuda.Event(), torch.cuda.Event()
            except RuntimeError as e:  # pinned or device memory for the batch's pixels
                if not isinstance(e, torch.OutOfMemoryError) and "memory" not in str(e).lower():
                    raise
                slot.host_pixels = slot.host_meta = None
                raise OutOfMemory(
                    f"no memory for a batch of {images} images ({pixel_bytes / 2**20:.0f} MiB of decoded pixels): "
                    "pass a smaller --batch or smaller images"
                ) from e

    def _harvest(self, slot: Slot, results: list[Result | None]) -> None:
        """Wait for a buffer set's batch (if any) and write its images' results."""
        jobs, slot.jobs = slot.jobs, []
        if not jobs:
            return
        if slot.error is None and self.cuda:
            slot.done.synchronize()
            logits = slot.host_logits[: len(jobs)].numpy()
        elif slot.error is None:
            logits = slot.logits.float().numpy()
        if slot.error is not None:
            for job in jobs:
                results[job.index] = self._failed(job.index, job.image, slot.error, job.plan.route)
            return
        from sppnet.engines.runtime import Result

        logits = np.array(logits, dtype=np.float32)  # a copy: the pinned buffer is reused
        tops = batch_topk(logits, self.rt.topk, self.rt.models.card.classes)
        for i, job in enumerate(jobs):
            results[job.index] = Result(job.index, _source(job.image), job.plan.route, tops[i], logits[i])

    def _failed(self, index: int, image: Any, error: Exception, route: Route | None) -> Result:
        from sppnet.engines.runtime import Result

        return Result(index, _source(image), route, error=one_line(error))

    def close(self) -> None:
        """Stop the decoding processes and the packing threads, and drop the buffers."""
        self.decoder.close()
        self._packers.shutdown()
        self.slots = [Slot() for _ in self.slots]


def batch_topk(logits: np.ndarray, k: int, classes: Sequence[str]) -> list[tuple[tuple[str, float], ...]]:
    """`Runtime._topk` of every row at once: float64 softmax, the k most probable classes, ties in class order."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    k = min(k, p.shape[1])
    top = np.argpartition(-p, k - 1, axis=1)[:, :k]
    values = np.take_along_axis(p, top, axis=1)
    top = np.take_along_axis(top, np.lexsort((top, -values), axis=1), axis=1)  # most probable first, ties by class
    kth = np.take_along_axis(p, top[:, -1:], axis=1)
    for row in np.flatnonzero((p >= kth).sum(axis=1) > k):  # a tie at the k-th place: the lowest classes win
        candidates = np.flatnonzero(p[row] >= kth[row, 0])
        top[row] = candidates[np.argsort(-p[row, candidates], kind="stable")[:k]]
    chosen = np.take_along_axis(p, top, axis=1).tolist()
    return [
        tuple((classes[i], value) for i, value in zip(indices, values, strict=True))
        for indices, values in zip(top.tolist(), chosen, strict=True)
    ]


@contextlib.contextmanager
def _one_thread() -> Iterator[None]:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def _checked(image: np.ndarray) -> np.ndarray | Exception:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 or min(image.shape[:2]) < 1:
        return BadImage(
            f"an image array must be BGR uint8 of shape (H, W, 3); got {image.dtype} {image.shape}: "
            "decode files with sppnet.core.images.load_bgr"
        )
    return np.ascontiguousarray(image)


def _source(image: Any) -> str:
    return "<array>" if isinstance(image, np.ndarray) else os.fspath(image)
