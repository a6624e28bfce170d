"""The plugin's Triton kernel equals the PyTorch SPP bit for bit.

Checked under the Triton interpreter on CPU tensors (exact: max neither rounds nor reorders), against the independent
references `spatial_pyramid_pool` and `spp_naive`; the native path is compiled for real CUDA targets without a GPU,
and run against the reference where a GPU is present.
"""

from __future__ import annotations

import os

# Before the kernel module is first imported: @triton.jit picks the interpreter when it decorates the kernel.
_saved_interpret = os.environ.get("TRITON_INTERPRET")
os.environ["TRITON_INTERPRET"] = "1"

import importlib  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import re  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from collections.abc import Iterator  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from sppnet.core.bins import spp_bins  # noqa: E402
from sppnet.core.errors import DeviceUnavailable  # noqa: E402
from sppnet.core.spp import spatial_pyramid_pool, spp_naive  # noqa: E402
from sppnet.export import bench_kernel  # noqa: E402
from sppnet.export import spp_triton as kernel  # noqa: E402

if not kernel.interpreted():  # imported natively earlier in this process: decorate the kernel again
    kernel = importlib.reload(kernel)
# Restored for the other test modules; `_interpreter` sets it again while these tests run (Triton's interpreter
# reads it at call time too).
if _saved_interpret is None:
    del os.environ["TRITON_INTERPRET"]
else:
    os.environ["TRITON_INTERPRET"] = _saved_interpret

PYRAMID = (6, 3, 2, 1)


@pytest.fixture(scope="module", autouse=True)
def _interpreter() -> Iterator[None]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRITON_INTERPRET", "1")
        yield


def _binnable(height: int, width: int, levels: tuple[int, ...], rule: str) -> bool:
    try:
        for n in levels:
            spp_bins(height, n, rule)
            spp_bins(width, n, rule)
    except ValueError:
        return False
    return True


def _cases() -> list[tuple[str, tuple[int, ...], int, int, str]]:
    """(rule, levels, H, W, dtype): corner cases plus seeded random sizes, kept where the rule can bin them."""
    rng = random.Random(0)
    fixed = [(1, 1), (1, 7), (7, 1), (2, 3), (4, 5), (2, 60), (60, 2), (13, 13), (10, 10), (7, 9), (6, 7), (12, 19)]
    fixed += [(6, 61), (11, 5), (13, 7), (5, 8), (9, 16), (18, 18), (6, 10), (16, 11), (24, 14)]
    randoms = [(rng.randint(1, 24), rng.randint(1, 24)) for _ in range(60)]
    cases = []
    for rule in ("adaptive", "window", "caffe"):
        for levels, budget in ((PYRAMID, 10), ((4, 2, 1), 4), ((5,), 3)):
            sizes = [s for s in fixed if _binnable(*s, levels, rule)][:budget]
            sizes += [s for s in randoms if _binnable(*s, levels, rule) and s not in sizes][:2]
            cases += [(rule, levels, h, w) for h, w in sizes]
    return [(*case, ("float32", "float16")[i % 2]) for i, case in enumerate(cases)]


CASES = _cases()


def test_the_cases_cover_every_rule_pyramid_and_dtype() -> None:
    for rule in ("adaptive", "window", "caffe"):
        for dtype in ("float32", "float16"):
            assert sum(c[0] == rule and c[1] == PYRAMID and c[4] == dtype for c in CASES) >= 3, (rule, dtype)
            assert sum(c[0] == rule and c[1] != PYRAMID and c[4] == dtype for c in CASES) >= 2, (rule, dtype)
    sizes = {(h, w) for r, _, h, w, _ in CASES if r == "adaptive"}
    assert {(1, 1), (1, 7), (2, 3), (2, 60), (13, 13), (10, 10)} <= sizes  # tiny, thin, smaller than 6, extreme


def test_the_kernel_runs_under_the_interpreter() -> None:
    assert kernel.interpreted()


@pytest.mark.parametrize(("rule", "levels", "height", "width", "dtype"), CASES, ids=lambda v: str(v))
def test_equals_the_reference_exactly(rule: str, levels: tuple[int, ...], height: int, width: int, dtype: str) -> None:
    generator = torch.Generator().manual_seed(height * 100 + width)
    x = torch.randn(1, 5, height, width, generator=generator).to(getattr(torch, dtype))
    got = kernel.spp_triton(x, levels, rule)
    assert got.dtype == x.dtype and got.shape == (1, 5 * sum(n * n for n in levels))
    assert torch.equal(got, spatial_pyramid_pool(x.float(), levels, rule).to(x.dtype))


@pytest.mark.parametrize(("rule", "height", "width"), [("adaptive", 10, 13), ("window", 13, 7), ("caffe", 10, 12)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_batch_and_several_channel_blocks(rule: str, height: int, width: int, dtype: torch.dtype) -> None:
    x = torch.randn(2, 7, height, width, generator=torch.Generator().manual_seed(1)).to(dtype)
    got = kernel.spp_triton(x, PYRAMID, rule, block_c=4)  # 2 channel blocks, the last one 3/4 full
    assert got.dtype == dtype
    assert torch.equal(got, spp_naive(x.float(), PYRAMID, rule).to(dtype))


def test_default_block_with_channels_not_a_multiple_of_it() -> None:
    x = torch.randn(2, 13, 7, 9, generator=torch.Generator().manual_seed(2))  # block 16, 13 live lanes
    assert torch.equal(kernel.spp_triton(x, (4, 2, 1)), spatial_pyramid_pool(x, (4, 2, 1)))


def test_order_is_caffes_levels_as_given() -> None:
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    assert torch.equal(kernel.spp_triton(x, (1, 2, 4)), spp_naive(x, (1, 2, 4)))


def test_extreme_values_and_nan_propagate_like_the_reference() -> None:
    x = torch.full((1, 4, 6, 6), -3.0e38)
    x[0, 0, 5, 5] = float("-inf")
    x[0, 1, 0, 0] = float("inf")
    x[0, 2, 3, 3] = float("nan")
    x[0, 3] = float("-inf")
    got, want = kernel.spp_triton(x, PYRAMID), spatial_pyramid_pool(x, PYRAMID)
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    assert got.isnan().any() and got.isneginf().any()


def test_float16_extremes() -> None:
    x = torch.full((1, 2, 5, 5), -65504.0, dtype=torch.float16)
    x[0, 1, 2, 2] = 65504.0
    assert torch.equal(kernel.spp_triton(x, (3, 1)), spp_naive(x, (3, 1)))


def test_non_contiguous_input() -> None:
    x = torch.randn(2, 9, 6, 5, generator=torch.Generator().manual_seed(4)).transpose(2, 3)
    assert not x.is_contiguous()
    assert torch.equal(kernel.spp_triton(x, (3, 1)), spatial_pyramid_pool(x, (3, 1)))


def test_writes_into_out() -> None:
    x = torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(5))
    out = torch.full((2, 3 * 5), 7.0)
    assert kernel.spp_triton(x, (2, 1), out=out) is out
    assert torch.equal(out, spatial_pyramid_pool(x, (2, 1)))


@pytest.mark.parametrize(
    "out",
    [torch.empty(2, 14), torch.empty(2, 15, dtype=torch.float16), torch.empty(15, 2).t(), torch.empty(2, 15, 1)],
    ids=["shape", "dtype", "strides", "rank"],
)
def test_rejects_a_bad_out(out: torch.Tensor) -> None:
    with pytest.raises(ValueError, match="out must be a contiguous"):
        kernel.spp_triton(torch.zeros(2, 3, 5, 5), (2, 1), out=out)


def test_empty_batch_gives_an_empty_output_like_the_reference() -> None:
    x = torch.zeros(0, 4, 5, 5)
    got = kernel.spp_triton(x)
    assert got.shape == spatial_pyramid_pool(x).shape == (0, 200)


@pytest.mark.parametrize(
    ("rule", "height", "width"), [("window", 10, 10), ("window", 4, 13), ("caffe", 13, 13), ("caffe", 1, 7)]
)
def test_invalid_sizes_raise_the_reference_error(rule: str, height: int, width: int) -> None:
    x = torch.zeros(1, 2, height, width)
    with pytest.raises(ValueError) as reference:
        spatial_pyramid_pool(x, PYRAMID, rule)
    with pytest.raises(ValueError, match=re.escape(str(reference.value))):
        kernel.spp_triton(x, PYRAMID, rule)


@pytest.mark.parametrize(
    ("x", "kwargs", "message"),
    [
        (torch.zeros(3, 5, 5), {}, "4-D"),
        (torch.zeros(1, 0, 5, 5), {}, "empty feature map"),
        (torch.zeros(1, 2, 5, 0), {}, "empty feature map"),
        (torch.zeros(1, 2, 5, 5, dtype=torch.int32), {}, "float32 or float16"),
        (torch.zeros(1, 2, 5, 5, dtype=torch.float64), {}, "float32 or float16"),
        (torch.zeros(1, 2, 5, 5), {"rule": "nearest"}, "unknown SPP rule"),
        (torch.zeros(1, 2, 5, 5), {"levels": ()}, "non-empty"),
        (torch.zeros(1, 2, 5, 5), {"levels": (2, 0)}, "non-empty"),
        (torch.zeros(1, 2, 5, 5), {"block_c": 3}, "power of two"),
    ],
)
def test_bad_input_raises_a_value_error(x: torch.Tensor, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        kernel.spp_triton(x, **kwargs)


def _run_natively(code: str) -> str:
    """Run `code` in a fresh interpreter without TRITON_INTERPRET (native Triton), returning its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_native_kernel_compiles_for_cuda_targets_without_a_gpu() -> None:
    code = """
import json, re
from sppnet.export.spp_triton import compile_native, interpreted
assert not interpreted()
found = {}
for capability in (80, 90):
    for dtype in ("float32", "float16"):
        for rule in ("adaptive", "window", "caffe"):
            compiled = compile_native(dtype, (6, 3, 2, 1), rule, 64, capability)
            assert compiled.asm["cubin"], (capability, dtype, rule)
            maxes = re.findall(r"max\\.NaN\\.f(?:16|32)", compiled.asm["ptx"])
            found[f"{capability}/{dtype}/{rule}"] = sorted(set(maxes))
print(json.dumps(found))
"""
    found = json.loads(_run_natively(code).strip().splitlines()[-1])
    assert len(found) == 12
    for key, maxes in found.items():  # the NaN-propagating max the interpreter is checked with
        assert maxes == ["max.NaN.f16" if "float16" in key else "max.NaN.f32"], key


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_native_kernel_on_cuda_equals_the_reference() -> None:
    code = "import json\nfrom sppnet.export.bench_kernel import check_kernel_cuda as check\nprint(json.dumps(check()))"
    result = json.loads(_run_natively(code).strip().splitlines()[-1])
    assert result["mismatches"] == 0 and set(result["max_abs_error"].values()) == {0.0}, result


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message given where there is no GPU")
def test_gpu_checks_say_they_need_a_gpu() -> None:
    with pytest.raises(DeviceUnavailable, match="needs a CUDA GPU"):
        bench_kernel.bench_kernel(repeats=1)
    with pytest.raises(DeviceUnavailable, match="needs a CUDA GPU"):
        bench_kernel.check_kernel_cuda(trials=1)


def test_bench_rows_format() -> None:
    rows = [bench_kernel.KernelBenchRow("13x13", "adaptive", "float32", 0.05, 0.2, True)]
    table = bench_kernel.format_rows(rows, batch=32, channels=256, levels=PYRAMID)
    assert "13x13" in table and "4.00x" in table and "yes" in table
    assert rows[0].to_json()["torch_over_triton"] == pytest.approx(4.0)
