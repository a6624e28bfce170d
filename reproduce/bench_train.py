"""`sppnet bench train`: training images per second per device, precision and size, with data loading against
compute, all measured in one run.

For each combination it times, on the same images: making batches alone (decode is done up front; this is resize,
crop, flip, colour, mean), the training step alone on ready batches already on the device, and the two together as
`sppnet train` runs them (worker processes and pinned memory on a GPU, a prefetch thread on the CPU).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch

from sppnet.core.devices import check_precision, resolve_device
from sppnet.core.errors import InvalidInput
from sppnet.reproduce.solver import build_solver
from sppnet.reproduce.train import (
    Context,
    TrainConfig,
    TrainData,
    _batches,
    _loader,
    build_for,
    default_workers,
    memory_format,
    train_step,
)


@dataclass(frozen=True)
class TrainBenchRow:
    """Seconds per batch of each part at one device, precision and size, and the images per second they allow."""

    device: str
    precision: str
    size: int
    batch: int
    data_s: float
    compute_s: float
    pipelined_s: float

    @property
    def images_per_s(self) -> float:
        return self.batch / self.pipelined_s

    def to_json(self) -> dict[str, float | str]:
        return asdict(self) | {
            "images_per_s": self.images_per_s,
            "data_over_compute": self.data_s / self.compute_s,
            "pipelined_over_compute": self.pipelined_s / self.compute_s,
        }


def bench_train(
    config: TrainConfig,
    data: TrainData,
    sizes: Sequence[int],
    batches: int = 8,
    *,
    devices: Sequence[str] = ("cpu",),
    precisions: Sequence[str] = ("fp32",),
    workers: int | None = None,
) -> list[TrainBenchRow]:
    """Time `batches` batches of data making, training steps and both pipelined, per device, precision and size."""
    if len(data.train_images) < config.batch_size:
        raise InvalidInput(
            f"{len(data.train_images)} training images are fewer than one batch of {config.batch_size}: "
            "pass a smaller --batch-size or a larger dataset"
        )
    rows = []
    for name in devices:
        device = resolve_device(name)
        for precision in precisions:
            check_precision(device, precision)
            torch.manual_seed(config.seed)
            model = build_for(config, len(data.classes)).to(device, memory_format=memory_format(device)).train()
            optimizer = build_solver(model, config.solver)
            ctx = Context(device=device)
            for size in sizes:
                at_size = replace(config, sizes=(size,), precision=precision)
                rows.append(_bench_size(model, optimizer, at_size, data, ctx, batches, workers, str(device)))
    return rows


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _bench_size(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    config: TrainConfig,
    data: TrainData,
    ctx: Context,
    batches: int,
    workers: int | None,
    device_name: str,
) -> TrainBenchRow:
    device, memory = ctx.device, memory_format(ctx.device)

    def made() -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for x, y in _batches(data, config, Context(), 0):
            out.append((torch.from_numpy(x), torch.from_numpy(y)))
            if len(out) == batches:
                break
        return out

    ready = made()  # also the warm-up of the data path
    on_device = [(x.to(device).contiguous(memory_format=memory), y.to(device)) for x, y in ready]
    train_step(model, optimizer, *on_device[0], config.precision)  # warm-up of the model at this size
    _sync(device)
    start = time.perf_counter()
    made()
    data_s = (time.perf_counter() - start) / len(ready)
    start = time.perf_counter()
    for x, y in on_device:
        train_step(model, optimizer, x, y, config.precision)
    _sync(device)
    compute_s = (time.perf_counter() - start) / len(ready)
    start = time.perf_counter()
    done = 0
    for x, y in _loader(data, config, ctx, 0, default_workers(device) if workers is None else workers):
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory)
        train_step(model, optimizer, x, y.to(device, non_blocking=True), config.precision)
        done += 1
        if done == len(ready):
            break
    _sync(device)
    pipelined_s = (time.perf_counter() - start) / done
    size, batch = config.sizes[0], config.batch_size
    return TrainBenchRow(device_name, config.precision, size, batch, data_s, compute_s, pipelined_s)


def format_rows(rows: Sequence[TrainBenchRow], model: str) -> str:
    """A table of per-batch times, throughput and ratios."""
    lines = [
        f"training throughput, {model}, batch {rows[0].batch} (seconds per batch; ratios from the same run)",
        f"{'device':>7} {'prec':>5} {'size':>5} {'data':>8} {'compute':>8} {'pipelined':>10} {'images/s':>9} "
        f"{'data/compute':>13} {'pipelined/compute':>18}",
    ]
    for r in rows:
        lines.append(
            f"{r.device:>7} {r.precision:>5} {r.size:>5} {r.data_s:>8.3f} {r.compute_s:>8.3f} {r.pipelined_s:>10.3f} "
            f"{r.images_per_s:>9.0f} {r.data_s / r.compute_s:>12.2f}x {r.pipelined_s / r.compute_s:>17.2f}x"
        )
    base = rows[0]
    for r in rows[1:]:
        if r.size == base.size:
            lines.append(
                f"{r.device} {r.precision} vs {base.device} {base.precision} at {r.size}: "
                f"{r.images_per_s / base.images_per_s:.2f}x images/s"
            )
    return "\n".join(lines)
