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
from collections.abc import Callable, Iterator
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
from sppnet.core.devices import TRAIN_PRECISIONS, check_precision, resolve_device
from sppnet.core.errors import InvalidInput
from sppnet.core.models import SPPNet, build_model
from sppnet.core.networks import feature_sizes, get_network
from sppnet.core.preprocess import Preprocess, to_chw_batch, train_view
from sppnet.core.runs import save_trained
from sppnet.reproduce.checkpoint import load_checkpoint, read_checkpoint_meta, save_checkpoint
from sppnet.reproduce.datasets import builtin_split, load_images
from sppnet.reproduce.evaluate import evaluate
from sppnet.reproduce.solver import SolverConfig, build_solver, set_epoch_lr
from sppnet.reproduce.stats import PlateauRule, monitored

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
    precision: str = "fp32"  # "bf16": autocast, fp32 master weights and Caffe's solver unchanged
    plateau: PlateauRule | None = None  # lr / 10 at validation plateaus and a convergence stop; None: milestones

    def __post_init__(self) -> None:
        get_network(self.model)
        if self.precision not in TRAIN_PRECISIONS:
            raise InvalidInput(f"unknown precision {self.precision!r}: choose one of {', '.join(TRAIN_PRECISIONS)}")
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
    """Where this process stands in a (possibly single-process) data-parallel group, and its device."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = "auto") -> Context:
    """This process's device, and the torchrun group it joins when WORLD_SIZE > 1: NCCL across GPUs (one per
    process, by LOCAL_RANK), gloo across CPU processes."""
    resolved = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(device=resolved)
    if resolved.type == "cuda":
        resolved = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(resolved)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if resolved.type == "cuda" else "gloo")
    return Context(dist.get_rank(), dist.get_world_size(), resolved)


@dataclass
class TrainData:
    """Decoded training, test and (optionally) validation images (uint8 BGR, in memory) with labels and classes."""

    classes: list[str]
    train_images: list[np.ndarray]
    train_labels: np.ndarray
    test_images: list[np.ndarray]
    test_labels: np.ndarray
    bad: list[str]
    val_images: list[np.ndarray] | None = None
    val_labels: np.ndarray | None = None

    def hold_out(self, count: int) -> TrainData:
        """The same data with `count` training images (every k-th, so every class keeps its share) moved to a
        validation split, which drives the lr schedule and the stop without touching the test split."""
        if not 0 < count < len(self.train_images):
            raise InvalidInput(f"a validation split of {count} needs 0 < count < {len(self.train_images)} train images")
        step = len(self.train_images) // count
        held = np.zeros(len(self.train_images), dtype=bool)
        held[np.arange(count) * step] = True
        keep = [image for image, out in zip(self.train_images, held, strict=True) if not out]
        val = [image for image, out in zip(self.train_images, held, strict=True) if out]
        return replace(
            self,
            train_images=keep,
            train_labels=self.train_labels[~held],
            val_images=val,
            val_labels=self.train_labels[held],
        )


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


class EpochBatches(torch.utils.data.Dataset):
    """Batch k of an epoch for this rank: its share of the k-th global batch (the last incomplete one is dropped).

    Every view derives from (seed, epoch, image), so a batch is the same whichever process or thread makes it:
    worker processes on a GPU, a prefetch thread on the CPU, one process or several give the same batches.
    """

    def __init__(self, data: TrainData, config: TrainConfig, ctx: Context, epoch: int) -> None:
        self.data, self.config, self.epoch = data, config, epoch
        self.rank, self.world = ctx.rank, ctx.world
        self.order = np.random.default_rng([config.seed, epoch]).permutation(len(data.train_images))
        self.size = config.size_at(epoch)

    def __len__(self) -> int:
        return len(self.order) // self.config.batch_size

    def __getitem__(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        config, epoch = self.config, self.epoch
        start = k * config.batch_size
        indices = self.order[start : start + config.batch_size][self.rank :: self.world]
        views = [
            train_view(self.data.train_images[i], config.preprocess, _view_rng(config, epoch, i), self.size)
            for i in indices
        ]
        return to_chw_batch(views), self.data.train_labels[indices]


def _view_rng(config: TrainConfig, epoch: int, image: int) -> np.random.Generator:
    return np.random.default_rng([config.seed, epoch, image])


def _batches(data: TrainData, config: TrainConfig, ctx: Context, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """This rank's batches of the epoch, in order."""
    batches = EpochBatches(data, config, ctx, epoch)
    return (batches[k] for k in range(len(batches)))


def _loader(data: TrainData, config: TrainConfig, ctx: Context, epoch: int, workers: int) -> Iterator[Any]:
    """The epoch's batches as tensors: from `workers` forked processes into pinned memory (GPUs), or from a
    prefetch thread (workers 0: the CPU, where worker processes would compete with the compute)."""
    if workers == 0:
        return ((torch.from_numpy(x), torch.from_numpy(y)) for x, y in _prefetch(_batches(data, config, ctx, epoch)))
    return iter(
        torch.utils.data.DataLoader(
            EpochBatches(data, config, ctx, epoch),
            batch_size=None,
            num_workers=workers,
            pin_memory=ctx.device.type == "cuda",
            prefetch_factor=4,
            multiprocessing_context="fork",
            generator=torch.Generator(),  # its seed draw must not move torch's global generator (dropout)
        )
    )


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


def train_step(
    model: nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, target: torch.Tensor, precision: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step (bf16: the forward under autocast, the loss and the solver in fp32); returns (loss, logits)."""
    with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        logits = model(x)
        loss = F.cross_entropy(logits.float(), target)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def memory_format(device: torch.device) -> torch.memory_format:
    """channels_last: cuDNN's fast layout on GPUs, and 1.4-1.5x faster training steps on the CPU too (measured,
    zf5_cpu at 112, 2 threads); every device trains in it, so runs compare across devices."""
    return torch.channels_last


def train_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    data: TrainData,
    config: TrainConfig,
    ctx: Context,
    epoch: int,
    progress: bool = False,
    workers: int = 0,
) -> dict[str, float]:
    """One pass over the training images at this epoch's size; returns loss, error and timing figures."""
    model.train()
    _seed_torch(config, epoch, ctx)
    steps = len(data.train_images) // config.batch_size
    batches = _loader(data, config, ctx, epoch, workers)
    if progress and ctx.main:
        from tqdm import tqdm

        batches = tqdm(batches, total=steps, desc=f"epoch {epoch} @ {config.size_at(epoch)}px", leave=False)
    device, cuda = ctx.device, ctx.device.type == "cuda"
    memory = memory_format(device)
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    errors = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    wait = compute = 0.0
    tick = time.perf_counter()
    for x, y in batches:
        got = time.perf_counter()
        x = x.to(device, non_blocking=True).contiguous(memory_format=memory)
        target = y.to(device, non_blocking=True)
        loss, logits = train_step(model, optimizer, x, target, config.precision)
        # Accumulated on the device: reading a value back each step would stall a GPU's queue.
        loss_sum += loss.detach().double() * len(target)
        errors += (logits.argmax(1) != target).sum()
        seen += len(target)
        if cuda:
            torch.cuda.synchronize(device)  # so the wait/compute split below is what it says
        tick, wait, compute = time.perf_counter(), wait + got - tick, compute + time.perf_counter() - got
    totals = torch.stack([loss_sum, errors.double(), torch.tensor(float(seen), device=device, dtype=torch.float64)])
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
    saved_state = read_checkpoint_meta(directory)["state"]
    saved = saved_state["config"]
    device = saved_state.get("device", "cpu")
    if device != model_device(model).type:
        raise InvalidInput(
            f"{run_dir} was trained on {device}; resuming on {model_device(model).type} would not continue it "
            f"exactly: pass --device {device}, or train into a new --out"
        )
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
    device: str = "auto",
    workers: int | None = None,
) -> list[dict[str, Any]]:
    """Train `config` on DIR/train, test on DIR/test each epoch, checkpoint each epoch; returns the metrics.

    Args:
        device: "auto" (CUDA if present), "cpu" or "cuda"; under torchrun each process takes its LOCAL_RANK GPU.
        workers: batch-making processes; None = 0 on the CPU, up to 8 (cores - 1) on a GPU.
    Each epoch is tested on the validation images when `data` has them, else on the test split; under
    `config.plateau` that error drives the lr drops and the stop once converged, else the solver's milestones do.
    """
    ctx = init_distributed(device)
    check_precision(ctx.device, config.precision)
    workers = default_workers(ctx.device) if workers is None else workers
    run_dir = Path(run_dir)
    if ctx.main and not resume and (run_dir / CHECKPOINT_DIR / "checkpoint.json").exists():
        raise InvalidInput(f"{run_dir} already holds a training run: pass --resume to continue it, or another --out")
    if config.batch_size % ctx.world:
        raise InvalidInput(f"batch size {config.batch_size} does not split over {ctx.world} processes")
    data = data or load_data(data_dir, config, log if ctx.main else lambda _: None)
    if len(data.train_images) < config.batch_size:
        raise InvalidInput(f"{len(data.train_images)} training images are fewer than one batch of {config.batch_size}")
    torch.manual_seed(config.seed)
    model = build_for(config, len(data.classes))  # initialised on the CPU: the same weights on every device
    model.to(ctx.device, memory_format=memory_format(ctx.device))
    optimizer = build_solver(model, config.solver)
    start, history = _resume_point(run_dir, config, model, optimizer) if resume else (0, [])
    net: nn.Module = nn.parallel.DistributedDataParallel(model) if ctx.world > 1 else model
    for epoch in range(start, config.epochs):
        if _converged(config, history):
            break
        began = time.perf_counter()
        lr = _set_lr(optimizer, config, epoch, history)
        row = {"epoch": epoch, "size": config.size_at(epoch), "lr": lr}
        row |= train_epoch(net, optimizer, data, config, ctx, epoch, progress, workers)
        if ctx.main:
            held = data.val_images is not None
            split = "val" if held else "test"
            images = data.val_images if held else data.test_images
            labels = data.val_labels if held else data.test_labels
            tested = evaluate(model, images, labels, mode="crop", pre=config.preprocess)
            row |= {
                f"{split}_top1_err": tested.top1_err,
                f"{split}_top5_err": tested.top5_err,
                "seconds": time.perf_counter() - began,
            }
            history.append(row)
            state = {
                "epoch": epoch,
                "config": config.to_json(),
                "classes": data.classes,
                "history": history,
                "device": ctx.device.type,
            }
            save_checkpoint(run_dir / CHECKPOINT_DIR, model, optimizer, state)
            text = "".join(json.dumps(r) + "\n" for r in history)
            write_atomic(run_dir / METRICS_FILE, text.encode())
            log(
                f"epoch {epoch} size {row['size']} lr {lr:g} loss {row['train_loss']:.4f} "
                f"train err {row['train_top1_err']:.3f} {split} err {row[f'{split}_top1_err']:.3f} "
                f"({row['seconds']:.1f} s)"
            )
        if ctx.world > 1:
            history = _shared_history(history, ctx)  # every rank decides convergence from the same numbers
    if ctx.main:
        stopped = stop_record(config, history)
        if stopped["reason"] == "converged":
            log(f"converged after {stopped['epochs_run']} epochs: {stopped['rule']}")
        save_trained(
            run_dir,
            model,
            classes=data.classes,
            preprocess=config.preprocess,
            train={"config": config.to_json(), "stopped": stopped, "device": ctx.device.type, "bad_images": data.bad},
        )
    return history


def _converged(config: TrainConfig, history: list[dict[str, Any]]) -> bool:
    if config.plateau is None:
        return False
    return config.plateau.state(monitored(history), config.solver.milestones).converged_after is not None


def _set_lr(optimizer: torch.optim.Optimizer, config: TrainConfig, epoch: int, history: list[dict[str, Any]]) -> float:
    """This epoch's lr: base_lr x gamma^(drops so far), the drops coming from the plateau rule or the milestones."""
    if config.plateau is None:
        return set_epoch_lr(optimizer, config.solver, epoch)
    drops = config.plateau.state(monitored(history), config.solver.milestones).drops
    lr = config.solver.base_lr * config.solver.gamma**drops
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def stop_record(config: TrainConfig, history: list[dict[str, Any]]) -> dict[str, Any]:
    """Why a finished run stopped: "converged" (with the rule) or "budget" (every epoch ran), how far, and the
    monitored error's gain over the last quarter of its epochs."""
    errors = monitored(history)
    quarter = max(1, -(-len(errors) // 4))
    gain = 100.0 * (min(errors[:-quarter]) - min(errors)) if len(errors) > quarter else None
    state = config.plateau.state(errors, config.solver.milestones) if config.plateau is not None else None
    return {
        "reason": "converged" if state is not None and state.converged_after is not None else "budget",
        "epochs_run": len(history),
        "budget": config.epochs,
        "rule": config.plateau.describe() if config.plateau is not None else None,
        "lr_drops": list(state.why) if state is not None else [],
        "last_quarter_gain_pp": gain,
        "monitored": "val_top1_err" if history and "val_top1_err" in history[0] else "test_top1_err",
    }


def _shared_history(history: list[dict[str, Any]], ctx: Context) -> list[dict[str, Any]]:
    """The main process's history on every rank (only it tests), so all ranks stop at the same epoch."""
    shared = [history]
    dist.broadcast_object_list(shared, src=0)
    return shared[0]


def model_device(model: nn.Module) -> torch.device:
    """Where a model's parameters are."""
    param = next(model.parameters(), None)
    return torch.device("cpu") if param is None else param.device


def default_workers(device: torch.device) -> int:
    """Batch-making processes: none on the CPU (a prefetch thread instead), up to 8 on a GPU."""
    return 0 if device.type == "cpu" else max(1, min(8, (os.cpu_count() or 2) - 1))
