"""The plugin kernel on a CUDA GPU: timed side by side with the PyTorch SPP, and checked against it at many sizes.

Both need a GPU (CI has none, so they are run by hand on a GPU machine). The timings run the two candidates
interleaved in one process on the same input, so their ratio holds even where absolute times drift. `spp_triton`
is imported inside the functions so that importing this module never fixes the kernel's interpreter/native mode.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from sppnet.core.bins import DEFAULT_LEVELS, RULES, can_bin
from sppnet.core.errors import DeviceUnavailable, InvalidInput
from sppnet.core.spp import spatial_pyramid_pool

_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class KernelBenchRow:
    """Median forward milliseconds of the Triton kernel and of the PyTorch SPP at one size, and their ratio."""

    size: str
    rule: str
    dtype: str
    triton_ms: float
    torch_ms: float
    exact: bool

    @property
    def torch_over_triton(self) -> float:
        return self.torch_ms / self.triton_ms

    def to_json(self) -> dict[str, object]:
        return asdict(self) | {"torch_over_triton": self.torch_over_triton}


def _require_cuda(what: str) -> None:
    if not torch.cuda.is_available():
        raise DeviceUnavailable(f"{what} needs a CUDA GPU (torch.cuda.is_available() is False): run it on a GPU")


def _native_kernel(what: str) -> Callable[..., Tensor]:
    from sppnet.export.spp_triton import interpreted, spp_triton

    if interpreted():
        raise InvalidInput(f"{what} measures the native kernel: unset TRITON_INTERPRET and start a new process")
    return spp_triton


def _cuda_ms(fn: Callable[[], Tensor]) -> float:
    """One call's milliseconds between CUDA events (launch overhead included, as in an engine)."""
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    fn()
    end.record()
    end.synchronize()
    return start.elapsed_time(end)


def bench_kernel(
    sizes: Sequence[tuple[int, int]] = ((13, 13), (10, 10), (24, 32)),
    batch: int = 32,
    channels: int = 256,
    levels: Sequence[int] = DEFAULT_LEVELS,
    rule: str = "adaptive",
    repeats: int = 50,
    dtype: str = "float32",
    seed: int = 0,
) -> list[KernelBenchRow]:
    """Time `spp_triton` against `spatial_pyramid_pool` (forward, CUDA) on (batch, channels, H, W) per size."""
    _require_cuda("bench_kernel")
    spp_triton = _native_kernel("bench_kernel")
    if dtype not in _DTYPES:
        raise InvalidInput(f"bench_kernel dtype must be one of {sorted(_DTYPES)}; got {dtype!r}")
    torch.manual_seed(seed)
    rows = []
    for height, width in sizes:
        x = torch.randn(batch, channels, height, width, device="cuda", dtype=_DTYPES[dtype])
        candidates: dict[str, Callable[[], Tensor]] = {
            "triton": lambda x=x: spp_triton(x, levels, rule),
            "torch": lambda x=x: spatial_pyramid_pool(x, levels, rule),
        }
        exact = torch.equal(candidates["triton"](), candidates["torch"]())  # also the warm-up (Triton compiles here)
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for _ in range(repeats):
            for name, fn in candidates.items():
                times[name].append(_cuda_ms(fn))
        med = {name: statistics.median(t) for name, t in times.items()}
        rows.append(KernelBenchRow(f"{height}x{width}", rule, dtype, med["triton"], med["torch"], exact))
    return rows


def format_rows(rows: Sequence[KernelBenchRow], batch: int, channels: int, levels: Sequence[int]) -> str:
    """A table of medians and ratios."""
    lines = [
        f"SPP forward on CUDA, batch {batch} x {channels} channels, levels {tuple(levels)} "
        "(median ms per call; ratio from the same run)",
        f"{'conv5':>7} {'rule':>9} {'dtype':>8} {'triton':>9} {'torch':>9} {'torch/triton':>13} {'exact':>6}",
    ]
    for r in rows:
        lines.append(
            f"{r.size:>7} {r.rule:>9} {r.dtype:>8} {r.triton_ms:>9.3f} {r.torch_ms:>9.3f} "
            f"{r.torch_over_triton:>12.2f}x {'yes' if r.exact else 'NO':>6}"
        )
    return "\n".join(lines)


def check_kernel_cuda(
    trials: int = 300,
    max_size: int = 64,
    level_sets: Sequence[Sequence[int]] = ((6, 3, 2, 1), (4, 2, 1), (5,), (1,)),
    dtypes: Sequence[str] = ("float32", "float16"),
    seed: int = 0,
) -> dict[str, object]:
    """Native `spp_triton` on CUDA vs `spatial_pyramid_pool` on the CPU at random sizes, rules, levels and dtypes.

    Returns the case counts and the largest absolute error per dtype (max is exact: every error should be 0).
    Sizes a rule cannot bin are drawn again, and checked to raise the reference's ValueError.
    """
    _require_cuda("check_kernel_cuda")
    spp_triton = _native_kernel("check_kernel_cuda")
    rng = random.Random(seed)
    generator = torch.Generator().manual_seed(seed)
    max_error = dict.fromkeys(dtypes, 0.0)
    cases = mismatches = rejected = 0
    while cases < trials:
        rule, levels, dtype = rng.choice(RULES), tuple(rng.choice(level_sets)), rng.choice(tuple(dtypes))
        height, width = rng.randint(1, max_size), rng.randint(1, max_size)
        batch, channels = rng.randint(1, 4), rng.choice((1, 5, 37, 64, 150))  # few block sizes: few compilations
        if not can_bin(height, width, levels, rule):
            try:
                spp_triton(torch.zeros(1, 1, height, width, device="cuda", dtype=_DTYPES[dtype]), levels, rule)
            except ValueError:
                rejected += 1
                continue
            raise AssertionError(f"spp_triton accepted {height}x{width}, which rule {rule!r} cannot bin")
        x = torch.randn(batch, channels, height, width, generator=generator).to(_DTYPES[dtype])
        got = spp_triton(x.cuda(), levels, rule).cpu()
        want = spatial_pyramid_pool(x.float(), levels, rule).to(x.dtype)
        error = (got.float() - want.float()).abs().max().item()
        max_error[dtype] = max(max_error[dtype], error)
        mismatches += int(not torch.equal(got, want))
        cases += 1
    torch.cuda.synchronize()
    return {"cases": cases, "mismatches": mismatches, "rejected_sizes": rejected, "max_abs_error": max_error}
