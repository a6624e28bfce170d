"""The SPP plugin's kernel, written once in Triton: the whole pyramid for any H, W, bins computed in the kernel.

Bin edges come from the rule formulas in integer arithmetic (the same ones `sppnet.core.bins.spp_bins` uses),
so a dynamic-shape engine needs no per-shape tables. One program pools one output bin of one image for a block of
channels. It runs natively on CUDA tensors, and on CPU tensors under the Triton interpreter (`TRITON_INTERPRET=1`
set before this module is first imported), which is how CI checks it exactly.
"""

# Triton kernel parameters stay unannotated: Triton reads annotations itself (tl.constexpr) and specialises the rest.
# ruff: noqa: ANN001, ANN202

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

try:
    import triton
    import triton.language as tl
except ImportError as error:  # pragma: no cover - exercised only where triton is missing
    raise ImportError(
        "sppnet.export.spp_triton needs Triton: pip install triton (or pip install 'sppnet[gpu]')"
    ) from error

from sppnet.core.bins import DEFAULT_LEVELS, check_levels, check_pyramid
from sppnet.core.errors import InvalidInput
from sppnet.core.spp import check_maps
from sppnet.export.spp_plugin import (
    MAX_BLOCK_C,
    RULE_CODES,
    SUPPORTED_DTYPES,
    block_channels,
    kernel_rule_code,
    launch_grid,
)

_ADAPTIVE = tl.constexpr(RULE_CODES["adaptive"])
_WINDOW = tl.constexpr(RULE_CODES["window"])
_DTYPES = {getattr(torch, name) for name in SUPPORTED_DTYPES}


@triton.jit
def _bin_edges(i, n, a, RULE: tl.constexpr):
    """Half-open [start, end) of bin i of n along an axis of length a; every operand of // is >= 0."""
    if RULE == _ADAPTIVE:
        # floor(i*a/n), ceil((i+1)*a/n)
        start = (i * a) // n
        end = ((i + 1) * a + n - 1) // n
    elif RULE == _WINDOW:
        # Paper Sec. 2.3: win = ceil(a/n), stride = floor(a/n), no padding.
        start = i * (a // n)
        end = start + (a + n - 1) // n
    else:
        # Caffe's SPP layer: kernel = stride = ceil(a/n), pad = (kernel*n - a + 1) // 2, windows clipped to the map.
        kernel = (a + n - 1) // n
        origin = i * kernel - (kernel * n - a + 1) // 2
        start = tl.maximum(origin, 0)
        end = tl.minimum(origin + kernel, a)
    return start, end


# Sizes are not specialised: a dynamic-shape engine then compiles once per (dtype, levels, rule, block), never
# again mid-run when H or W turns 1 or a multiple of 16.
@triton.jit(do_not_specialize=["C", "H", "W"])
def _spp_kernel(
    x_ptr,
    out_ptr,
    C,
    H,
    W,
    LEVELS: tl.constexpr,
    TOTAL_BINS: tl.constexpr,
    RULE: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Max over one output bin (program axis 0: image * TOTAL_BINS + bin) for BLOCK_C channels (axis 1)."""
    pid = tl.program_id(0)
    image = pid // TOTAL_BINS
    b = pid % TOTAL_BINS
    # Which level bin b falls in: n, the bin's index within the level, and the level's first bin.
    n = 0
    local = 0
    first = 0
    offset = 0
    for k in tl.static_range(len(LEVELS)):
        in_level = (b >= offset) & (b < offset + LEVELS[k] * LEVELS[k])
        n = tl.where(in_level, LEVELS[k], n)
        local = tl.where(in_level, b - offset, local)
        first = tl.where(in_level, offset, first)
        offset += LEVELS[k] * LEVELS[k]
    row0, row1 = _bin_edges(local // n, n, H, RULE)
    col0, col1 = _bin_edges(local % n, n, W, RULE)

    channels = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    live = channels < C
    planes = x_ptr + (image.to(tl.int64) * C + channels) * (H * W)
    acc = tl.full([BLOCK_C], float("-inf"), x_ptr.dtype.element_ty)
    for row in range(row0, row1):
        for col in range(col0, col1):
            value = tl.load(planes + (row * W + col), mask=live, other=float("-inf"))
            acc = tl.maximum(acc, value, propagate_nan=tl.PropagateNan.ALL)
    # Caffe order: level by level, each level (C, n, n) row-major.
    target = image.to(tl.int64) * (C * TOTAL_BINS) + first * C + channels * (n * n) + local
    tl.store(out_ptr + target, acc, mask=live)


def interpreted() -> bool:
    """Whether the kernel runs under the Triton interpreter (TRITON_INTERPRET=1 when this module was imported)."""
    return not isinstance(_spp_kernel, triton.runtime.JITFunction)


def num_warps(block_c: int) -> int:
    """Warps per program: one channel per thread, 1 to 4 warps."""
    return max(1, min(4, block_c // 32))


def spp_triton(
    x: Tensor,
    levels: Sequence[int] = DEFAULT_LEVELS,
    rule: str = "adaptive",
    out: Tensor | None = None,
    *,
    block_c: int | None = None,
) -> Tensor:
    """SPP of whole maps with the Triton kernel: (N, C, H, W) -> (N, C * sum(n^2)) in Caffe's order.

    Same result as `sppnet.core.spp.spatial_pyramid_pool`, bit for bit. `out`, when given, must be a contiguous
    (N, C * sum(n^2)) tensor of x's dtype on x's device; `block_c` (channels per program) defaults by C.
    """
    kernel_rule_code(rule)
    levels = check_levels(levels)
    _check_input(x)
    num, channels, height, width = x.shape
    # The reference's own validation: the same ValueError wherever a rule cannot bin a size.
    check_pyramid(height, width, levels, rule)
    total = sum(n * n for n in levels)
    out = _check_out(out, x, (num, channels * total))
    if num == 0:
        return out
    block = block_channels(channels) if block_c is None else block_c
    grid = launch_grid(num, channels, levels, block)
    # Triton launches on the current device's current stream: make that x's device.
    with torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext():
        _spp_kernel[grid](
            x.contiguous(),
            out,
            channels,
            height,
            width,
            LEVELS=levels,
            TOTAL_BINS=total,
            RULE=RULE_CODES[rule],
            BLOCK_C=block,
            num_warps=num_warps(block),
            enable_fp_fusion=False,  # nothing to fuse (max only); explicit so Triton 3.9 does not warn
        )
    return out


def compile_native(
    dtype: str = "float32",
    levels: Sequence[int] = DEFAULT_LEVELS,
    rule: str = "adaptive",
    block_c: int = MAX_BLOCK_C,
    capability: int = 90,
) -> Any:
    """Compile the kernel ahead of time for CUDA compute capability `capability` (no GPU needed).

    Returns Triton's compiled kernel (`.asm` holds 'ptx' and 'cubin'): the native code a GPU would run, so a machine
    without one can still check that the kernel compiles for real, not only under the interpreter.
    """
    if interpreted():
        raise InvalidInput("compile_native needs the native kernel: unset TRITON_INTERPRET and start a new process")
    if dtype not in SUPPORTED_DTYPES:
        raise InvalidInput(f"compile_native dtype must be one of {SUPPORTED_DTYPES}; got {dtype!r}")
    kernel_rule_code(rule)
    levels = check_levels(levels)
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    pointer = "*fp32" if dtype == "float32" else "*fp16"
    constants = {
        "LEVELS": levels,
        "TOTAL_BINS": sum(n * n for n in levels),
        "RULE": RULE_CODES[rule],
        "BLOCK_C": block_c,
    }
    signature = {"x_ptr": pointer, "out_ptr": pointer, "C": "i32", "H": "i32", "W": "i32"}
    signature |= dict.fromkeys(constants, "constexpr")
    source = ASTSource(fn=_spp_kernel, signature=signature, constexprs=constants)
    return triton.compile(
        source,
        target=GPUTarget("cuda", capability, 32),
        options={"num_warps": num_warps(block_c), "enable_fp_fusion": False},
    )


def _check_input(x: Tensor) -> None:
    check_maps(x, "spp_triton")
    if x.dtype not in _DTYPES:
        raise InvalidInput(f"spp_triton runs float32 or float16 maps; got {x.dtype}: cast with x.float() or x.half()")
    if x.device.type != "cuda" and not interpreted():
        raise InvalidInput(
            f"spp_triton got a {x.device.type} tensor: pass a CUDA tensor, or set TRITON_INTERPRET=1 before "
            "importing sppnet.export.spp_triton to run the interpreter on the CPU"
        )


def _check_out(out: Tensor | None, x: Tensor, shape: tuple[int, int]) -> Tensor:
    if out is None:
        return torch.empty(shape, dtype=x.dtype, device=x.device)
    if tuple(out.shape) != shape or out.dtype != x.dtype or out.device != x.device or not out.is_contiguous():
        raise InvalidInput(
            f"spp_triton out must be a contiguous {x.dtype} tensor of shape {shape} on {x.device}; got "
            f"{out.dtype} {tuple(out.shape)} on {out.device}: allocate it with torch.empty({shape}, dtype=x.dtype)"
        )
    return out
