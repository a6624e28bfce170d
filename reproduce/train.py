"""Caffe-style training (PAPER.md section 4), single- or multi-size, on one process or many (torchrun, DDP).

Every random draw is derived from (seed, epoch, image index) or (seed, epoch, rank), never from a running
generator, so a run resumed from its last finished epoch ends with the same weights as one never interrupted,
and a 2-process run draws the same views as a 1-process one.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from sppnet.core.atomic import write_atomic
from sppnet.core.bins import DEFAULT_LEVELS
from sppnet.core.errors import InvalidInput
from sppnet.core.models import SPPNet, build_model
from sppnet.core.networks import feature_sizes, get_network
from sppnet.core.preprocess import Preprocess, to_chw_batch, train_view
from sppnet.core.runs import save_trained
from sppnet.reproduce.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from sppnet.reproduce.datasets import builtin_split, load_images
from sppnet.reproduce.evaluate import evaluate
from sppnet.reproduce.solver import SolverConfig, build_solver, set_epoch_lr

SizeSchedule = Literal["alternate", "random"]
CHECKPOINT_DIR = "checkpoint"
METRICS_FILE = "metrics.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    """One training run; defaults are the paper's (ZF-5, 224 px, lr 0.01, 70 epochs)."""

    model: str = "zf5"
    spp: bool = True
    levels: tuple[int, ...] = DEFAULT_LEVELS
    rule: str = "adaptive"
    sizes: tuple[int, ...] = (224,)
    size_schedule: SizeSchedule = "alternate"
    epochs: int = 70
    batch_size: int = 128
    seed: int = 0
    dropout: float = 0.5
    init_std: float = 0.01
    solver: SolverConfig = field(default_factory=SolverConfig)
    preprocess: Preprocess = field(default_factory=Preprocess)
    min_side: int = 8
    on_bad: Literal["skip", "error"] = "skip"

    def __post_init__(self) -> None:
        get_network(self.model)
        if not self.sizes or min(self.sizes) < 1:
            raise InvalidInput(f"training sizes must be positive pixels; got {self.sizes}")
        if self.size_schedule not in ("alternate", "random"):
            raise InvalidInput(f"size_schedule must be 'alternate' or 'random'; got {self.size_schedule!r}")
        if max(self.sizes) > self.preprocess.crop:
            raise InvalidInput(
                f"training size {max(self.sizes)} exceeds the crop {self.preprocess.crop}: "
                "multi-size training resizes the crop down, so make the crop the largest size"
            )
        if not self.spp and len(set(self.sizes)) > 1:
            raise InvalidInput("a no-SPP network has one input size: train it at one size, or use spp=True")
        if self.epochs < 1 or self.batch_size < 1:
            raise InvalidInput(f"epochs and batch_size must be >= 1; got {self.epochs}, {self.batch_size}")
        for size in self.sizes:
            feature_sizes(get_network(self.model), size, size)

    def size_at(self, epoch: int) -> int:
        """The training size of an epoch: alternate through `sizes`, or uniform in [min, max] (seeded by epoch)."""
        if self.size_schedule == "alternate":
            return self.sizes[epoch % len(self.sizes)]
        low, high = min(self.sizes), max(self.sizes)
        return int(np.random.default_rng([self.seed, epoch, 1]).integers(low, high + 1))

    def to_json(self) -> dict[str, Any]:
        """Plain JSON of the config, for checkpoints, model.json and the report."""
        record = asdict(self) | {"preprocess": self.preprocess.to_json()}
        return json.loads(json.dumps(record))  # tuples become lists, as they come back from a checkpoint


@dataclass
class Context:
    """Where this process stands in a (possibly single-process) data-parallel group."""

    rank: int = 0
    world: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Context:
    """Join the torchrun group (gloo on CPU) when WORLD_SIZE > 1, else a single-process context."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    return Context(dist.get_rank(), dist.get_world_size())


@dataclass
class TrainData:
    """Decoded training and test images (uint8 BGR, in memory) with their labels and class names."""

    classes: list[str]
    train_images: list[np.ndarray]
    train_labels: np.ndarray
    test_images: list[np.ndarray]
    test_labels: np.ndarray
    bad: list[str]


def load_data(data_dir: str | os.PathLike[str], config: TrainConfig, log: Callable[[str], None] = print) -> TrainData:
    """Read DIR/train and DIR/test (ImageFolder layout); bad images are reported and skipped or rejected."""
    decoded, bad = {}, []
    for split in ("train", "test"):
        arrays, kept, rejected = load_images(
            builtin_split(data_dir, split), min_side=config.min_side, on_bad=config.on_bad
        )
        decoded[split] = (arrays, np.array([s.label for s in kept.samples], dtype=np.int64), kept.classes)
        bad += [str(b) for b in rejected]
    for line in bad:
        log(f"skipped {line}")
    (train_images, train_labels, classes), (test_images, test_labels, _) = decoded["train"], decoded["test"]
    return TrainData(classes, train_images, train_labels, test_images, test_labels, bad)


def _batches(data: TrainData, config: TrainConfig, ctx: Context, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's share of each global batch of the epoch; the last incomplete global batch is dropped."""
    order = np.random.default_rng([config.seed, epoch]).permutation(len(data.train_images))
    size = config.size_at(epoch)
    for start in range(0, len(order) - config.batch_size + 1, config.batch_size):
        indices = order[start : start + config.batch_size][ctx.rank :: ctx.world]
        views = [
            train_view(data.train_images[i], config.preprocess, np.random.default_rng([config.seed, epoch, i]), size)
            for i in indices
        ]
        yield to_chw_batch(views), data.train_labels[indices]


def _prefetch(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Run a generator in a background thread (OpenCV and numpy release the GIL) so batches overlap compute."""
    buffer: queue.Queue[Any] = queue.Queue(depth)
    done = object()

    def fill() -> None:
        try:
            for item in items:
                buffer.put(item)
        except BaseException as err:  # handed to the consumer, re-raised there
            buffer.put(err)
        buffer.put(done)

    threading.Thread(target=fill, daemon=True).start()
    while (item := buffer.get()) is not done:
        if isinstance(item, BaseException):
            raise item
        yield item


def _seed_torch(config: TrainConfig, epoch: int, ctx: Context) -> None:
    # Dropout draws from torch's generator: reseed it per (seed, epoch, rank) so resume needs no saved state.
    torch.manual_seed(int(np.random.SeedSequence([config.seed, epoch, ctx.rank]).generate_state(1)[0]))


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainData,
    config: TrainConfig,
    ctx: Context,
    epoch: int,
    progress: bool = False,
) -> dict[str, float]:
    """One pass over the training images at this epoch's size; returns loss, error and timing figures."""
    model.train()
    _seed_torch(config, epoch, ctx)
    steps = len(data.train_images) // config.batch_size
    batches = _prefetch(_batches(data, config, ctx, epoch))
    if progress and ctx.main:
        from tqdm import tqdm

        batches = tqdm(batches, total=steps, desc=f"epoch {epoch} @ {config.size_at(epoch)}px", leave=False)
    loss_sum, errors, seen = 0.0, 0, 0
    wait = compute = 0.0
    tick = time.perf_counter()
    for x, y in batches:
        got = time.perf_counter()
        logits = model(torch.from_numpy(x))
        target = torch.from_numpy(y)
        loss = F.cross_entropy(logits, target)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.item() * len(y)
        errors += int((logits.argmax(1) != target).sum())
        seen += len(y)
        tick, wait, compute = time.perf_counter(), wait + got - tick, compute + time.perf_counter() - got
    totals = torch.tensor([loss_sum, errors, seen], dtype=torch.float64)
    if ctx.world > 1:
        dist.all_reduce(totals)
    loss_sum, errors, seen = totals.tolist()
    return {
        "train_loss": loss_sum / max(seen, 1),
        "train_top1_err": errors / max(seen, 1),
        "images": seen,
        "data_wait_seconds": wait,
        "compute_seconds": compute,
    }


def _resume_point(
    run_dir: Path, config: TrainConfig, model: nn.Module, optimizer: torch.optim.Optimizer
) -> tuple[int, list[dict[str, Any]]]:
    """Load the last finished epoch's checkpoint: the next epoch to run and the metrics so far (0, [] if none)."""
    directory = run_dir / CHECKPOINT_DIR
    if not (directory / "checkpoint.json").exists():
        return 0, []
    saved = read_checkpoint_meta(directory)["state"]["config"]
    if saved != config.to_json():
        changed = sorted(k for k in saved if saved.get(k) != config.to_json().get(k))
        raise InvalidInput(
            f"--resume with different settings than {run_dir} was started with ({', '.join(changed)}): "
            "resume with the same options, or train into a new --out"
        )
    state = load_checkpoint(directory, model, optimizer).state
    return int(state["epoch"]) + 1, list(state["history"])


def build_for(config: TrainConfig, num_classes: int) -> SPPNet:
    """The network a TrainConfig trains (the no-SPP baseline sized for its one training size)."""
    return build_model(
        config.model,
        spp=config.spp,
        num_classes=num_classes,
        levels=config.levels,
        rule=config.rule,
        dropout=config.dropout,
        init_std=config.init_std,
        input_size=None if config.spp else config.sizes[0],
    )


def train(
    config: TrainConfig,
    data_dir: str | os.PathLike[str],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    progress: bool = False,
    log: Callable[[str], None] = print,
    data: TrainData | None = None,
) -> list[dict[str, Any]]:
    """Train `config` on DIR/train, test on DIR/test each epoch, checkpoint each epoch; returns the metrics."""
    ctx = init_distributed()
    run_dir = Path(run_dir)
    if ctx.main and not resume and (run_dir / CHECKPOINT_DIR / "checkpoint.json").exists():
        raise InvalidInput(f"{run_dir} already holds a training run: pass --resume to continue it, or another --out")
    if config.batch_size % ctx.world:
        raise InvalidInput(f"batch size {config.batch_size} does not split over {ctx.world} processes")
    data = data or load_data(data_dir, config, log if ctx.main else lambda _: None)
    if len(data.train_images) < config.batch_size:
        raise InvalidInput(f"{len(data.train_images)} training images are fewer than one batch of {config.batch_size}")
    torch.manual_seed(config.seed)
    model = build_for(config, len(data.classes))
    optimizer = build_solver(model, config.solver)
    start, history = _resume_point(run_dir, config, model, optimizer) if resume else (0, [])
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    for epoch in range(start, config.epochs):
        began = time.perf_counter()
        lr = set_epoch_lr(optimizer, config.solver, epoch)
        row = {"epoch": epoch, "size": config.size_at(epoch), "lr": lr}
        row |= train_epoch(net, optimizer, data, config, ctx, epoch, progress)
        if ctx.main:
            test = evaluate(model, data.test_images, data.test_labels, mode="crop", pre=config.preprocess)
            row |= {
                "test_top1_err": test.top1_err,
                "test_top5_err": test.top5_err,
                "seconds": time.perf_counter() - began,
            }
            history.append(row)
            state = {"epoch": epoch, "config": config.to_json(), "classes": data.classes, "history": history}
            save_checkpoint(run_dir / CHECKPOINT_DIR, model, optimizer, state)
            text = "".join(json.dumps(r) + "\n" for r in history)
            write_atomic(run_dir / METRICS_FILE, text.encode())
            log(
                f"epoch {epoch} size {row['size']} lr {lr:g} loss {row['train_loss']:.4f} "
                f"train err {row['train_top1_err']:.3f} test err {row['test_top1_err']:.3f} "
                f"({row['seconds']:.1f} s)"
            )
        if ctx.world > 1:
            dist.barrier()
    if ctx.main:
        save_trained(
            run_dir,
            model,
            classes=data.classes,
            preprocess=config.preprocess,
            train={"config": config.to_json(), "epochs_run": config.epochs, "bad_images": data.bad},
        )
    return history


def with_sizes(config: TrainConfig, sizes: Sequence[int]) -> TrainConfig:
    """The same config at other training sizes, with the preprocessing scaled to match."""
    return replace(config, sizes=tuple(sizes), preprocess=get_network(config.model).default_preprocess(sizes))
