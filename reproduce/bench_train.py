"""`sppnet bench train`: training throughput per size, and how much of it is data loading, from one run.

For each training size it times, on the same images: making batches alone (decode is done up front; this is
resize, crop, flip, colour, mean), the training step alone on ready batches, and the two together as
`sppnet train` runs them (batches prepared in a background thread).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace

import torch
import torch.nn.functional as F

from sppnet.reproduce.solver import build_solver
from sppnet.reproduce.train import Context, TrainConfig, TrainData, _batches, _prefetch, build_for


@dataclass(frozen=True)
class TrainBenchRow:
    """Seconds per batch of each part at one size, and the images per second they allow."""

    size: int
    batch: int
    data_s: float
    compute_s: float
    pipelined_s: float

    @property
    def images_per_s(self) -> float:
        return self.batch / self.pipelined_s

    def to_json(self) -> dict[str, float]:
        return asdict(self) | {
            "images_per_s": self.images_per_s,
            "data_over_compute": self.data_s / self.compute_s,
            "pipelined_over_compute": self.pipelined_s / self.compute_s,
        }


def bench_train(config: TrainConfig, data: TrainData, sizes: Sequence[int], batches: int = 8) -> list[TrainBenchRow]:
    """Time `batches` batches of data making, training steps and both pipelined, at each size."""
    torch.manual_seed(config.seed)
    model = build_for(config, len(data.classes)).train()
    optimizer = build_solver(model, config.solver)

    def step(x: torch.Tensor, y: torch.Tensor) -> None:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    rows = []
    for size in sizes:
        at_size = replace(config, sizes=(size,))

        def stream(at_size: TrainConfig = at_size) -> list[tuple[torch.Tensor, torch.Tensor]]:
            made = []
            for x, y in _batches(data, at_size, Context(), 0):
                made.append((torch.from_numpy(x), torch.from_numpy(y)))
                if len(made) == batches:
                    break
            return made

        ready = stream()  # also the warm-up of the data path
        step(*ready[0])  # warm-up of the model at this size
        start = time.perf_counter()
        stream()
        data_s = (time.perf_counter() - start) / len(ready)
        start = time.perf_counter()
        for x, y in ready:
            step(x, y)
        compute_s = (time.perf_counter() - start) / len(ready)
        start = time.perf_counter()
        done = 0
        for x, y in _prefetch(iter(_batches(data, at_size, Context(), 0))):
            step(torch.from_numpy(x), torch.from_numpy(y))
            done += 1
            if done == len(ready):
                break
        pipelined_s = (time.perf_counter() - start) / done
        rows.append(TrainBenchRow(size, config.batch_size, data_s, compute_s, pipelined_s))
    return rows


def format_rows(rows: Sequence[TrainBenchRow], model: str) -> str:
    """A table of per-batch times, throughput and ratios."""
    lines = [
        f"training throughput, {model}, batch {rows[0].batch} (seconds per batch; ratios from the same run)",
        f"{'size':>5} {'data':>8} {'compute':>8} {'pipelined':>10} {'images/s':>9} {'data/compute':>13} "
        f"{'pipelined/compute':>18}",
    ]
    for r in rows:
        lines.append(
            f"{r.size:>5} {r.data_s:>8.3f} {r.compute_s:>8.3f} {r.pipelined_s:>10.3f} {r.images_per_s:>9.0f} "
            f"{r.data_s / r.compute_s:>12.2f}x {r.pipelined_s / r.compute_s:>17.2f}x"
        )
    return "\n".join(lines)
