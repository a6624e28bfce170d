"""Caffe parity: our Caffe-exact layers against the real BVLC Caffe, run as an oracle in a subprocess.

Every expected value here is Caffe's output (or Caffe aborting); none comes from our code. Error figures are
printed (pytest -s) and, when SPPNET_PARITY_REPORT names a file, appended to it as one JSON line each.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np
import pytest
import torch

from sppnet.core import build_model, spatial_pyramid_pool, spp_bins
from sppnet.core.layers import AcrossChannelLRN, CaffeMaxPool2d, WithinChannelLRN

pytestmark = pytest.mark.caffe

PYRAMID_HEIGHTS = (1, 2, 3, 4)
SPREAD = [(a, a) for a in range(1, 17)] + [
    (1, 2),
    (2, 1),
    (1, 9),
    (9, 1),
    (2, 7),
    (3, 5),
    (5, 3),
    (4, 11),
    (7, 4),
    (6, 22),
    (17, 6),
    (13, 17),
    (20, 21),
    (24, 26),
    (26, 24),
    (25, 31),
    (31, 25),
    (27, 32),
    (29, 29),
    (33, 64),
    (40, 9),
    (41, 50),
    (55, 55),
    (64, 63),
    (97, 13),
    (100, 77),
    (8, 14),
    (14, 8),
    (16, 33),
    (32, 32),
    (50, 61),
    (8, 100),
    (111, 16),
]
SPP_SIZES = {1: SPREAD, 2: SPREAD, 3: [(h, w) for h in range(1, 41) for w in (h, h + 3)], 4: SPREAD}

LRN_SIZES = [(1, 1), (2, 3), (3, 2), (5, 4), (13, 13), (27, 31)]
WITHIN_SETTINGS = {"zf5": (3, 5e-5, 0.75), "strong": (5, 1e-2, 0.5)}
ACROSS_SETTING = (5, 1e-4, 0.75)
# float32 LRN: |ours - caffe| <= ATOL + RTOL * |caffe| elementwise, for inputs in [-300, 300].
LRN_RTOL, LRN_ATOL = 1e-5, 1e-4

POOL_SETTINGS = [(3, 2), (3, 3), (2, 2)]

ZF5_SIZES = [(1, 224, 224), (1, 180, 180), (1, 197, 251), (2, 139, 163)]
ZF5_CONV5 = {(224, 224): (13, 13), (180, 180): (10, 10)}
# float32 conv stack (expect ~1e-6 .. 1e-5): max |ours - caffe| <= ZF5_REL_TOL * max |caffe| per blob.
ZF5_REL_TOL = 1e-4


def layer(name: str, kind: str, bottom: str, **params: Any) -> dict[str, Any]:
    """One NetSpec layer for the oracle: `kind` is Caffe's layer type, enums are given by name."""
    return {"name": name, "type": kind, "bottom": [bottom], "params": params}


def errors(ours: np.ndarray, caffe: np.ndarray) -> dict[str, float]:
    """Max abs error, Caffe's max magnitude, their ratio, and the max elementwise relative error where |caffe|
    is at least 1% of its max."""
    ours64, caffe64 = np.asarray(ours, np.float64), np.asarray(caffe, np.float64)
    diff = np.abs(ours64 - caffe64)
    magnitude = float(np.abs(caffe64).max()) if caffe64.size else 0.0
    big = np.abs(caffe64) >= 0.01 * magnitude
    return {
        "max_abs": float(diff.max()) if diff.size else 0.0,
        "caffe_max": magnitude,
        "rel_to_max": float(diff.max()) / magnitude if magnitude else 0.0,
        "max_rel_elem": float((diff[big] / np.abs(caffe64[big])).max()) if big.any() and magnitude else 0.0,
    }


def report(comparison: str, **figures: Any) -> str:
    """Print one comparison's figures as a JSON line (also appended to $SPPNET_PARITY_REPORT); return it."""
    line = json.dumps({"comparison": comparison, **figures})
    print(line)
    path = os.environ.get("SPPNET_PARITY_REPORT")
    if path:
        with open(path, "a") as out:
            out.write(line + "\n")
    return line


def caffe_refuses(height: int, width: int, levels: tuple[int, ...]) -> bool:
    """Whether our `spp_bins(..., "caffe")` refuses some level of the pyramid on this map."""
    for n in levels:
        for a in (height, width):
            try:
                spp_bins(a, n, "caffe")
            except ValueError:
                return True
    return False


# ----------------------------------------------------------------------------------------- SPP layer


@pytest.fixture(scope="module")
def spp_runs(caffe_oracle) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Caffe SPP (MAX, pyramid_height 1..4) on random maps of every size in SPP_SIZES: inputs, results."""
    rng = np.random.default_rng(2014)
    inputs, cases = {}, []
    for height in PYRAMID_HEIGHTS:
        for h, w in SPP_SIZES[height]:
            case_id = f"spp{height}_{h}x{w}"
            inputs[case_id] = rng.standard_normal((2, 3 + (h + w) % 3, h, w)).astype(np.float32)
            spp = layer("spp", "SPP", "data", spp_param={"pyramid_height": height, "pool": "MAX"})
            cases.append(caffe_oracle.Case(case_id, inputs[case_id], [spp], ["spp"]))
    return inputs, caffe_oracle.run(cases)


@pytest.mark.parametrize("height", PYRAMID_HEIGHTS)
def test_caffe_rule_pyramid_equals_caffe_spp_layer_exactly(spp_runs, height):
    inputs, results = spp_runs
    levels = (1, 2, 4, 8)[:height]
    worst, compared, mismatches = 0.0, 0, []
    for h, w in SPP_SIZES[height]:
        case_id = f"spp{height}_{h}x{w}"
        if results[case_id] == "aborted":
            continue
        x = inputs[case_id]
        expected = results[case_id]["spp"].reshape(x.shape[0], -1)  # pyramid_height 1 gives (N, C, 1, 1)
        try:
            ours = spatial_pyramid_pool(torch.from_numpy(x), levels, rule="caffe").numpy()
        except ValueError as exc:
            mismatches.append(f"{h}x{w}: Caffe ran, we raised {exc}")
            continue
        if ours.shape != expected.shape:
            mismatches.append(f"{h}x{w}: shape {ours.shape} vs Caffe {expected.shape}")
            continue
        diff = float(np.abs(ours - expected).max())
        worst, compared = max(worst, diff), compared + 1
        if diff != 0:
            mismatches.append(f"{h}x{w}: max abs diff {diff}")
    line = report(f"spp_pyramid_height_{height}", cases=compared, max_abs=worst)
    assert compared > 0
    assert not mismatches, f"{line}\n" + "\n".join(mismatches)


@pytest.mark.parametrize("height", PYRAMID_HEIGHTS)
def test_we_refuse_exactly_the_maps_where_caffe_spp_aborts(spp_runs, height, caffe_oracle):
    inputs, results = spp_runs
    levels = (1, 2, 4, 8)[:height]
    sizes = SPP_SIZES[height]
    aborted = {(h, w) for h, w in sizes if results[f"spp{height}_{h}x{w}"] == "aborted"}
    refused = {(h, w) for h, w in sizes if caffe_refuses(h, w, levels)}
    report(f"spp_aborts_pyramid_height_{height}", caffe_aborted=sorted(aborted), we_refuse=sorted(refused))
    assert aborted == refused, (
        f"Caffe aborted only: {sorted(aborted - refused)}; we refuse only: {sorted(refused - aborted)}"
    )
    if height >= 2:
        assert aborted, "the size list must include maps where Caffe aborts"
    for h, w in sorted(aborted):
        assert "Check failed" in caffe_oracle.abort_logs[f"spp{height}_{h}x{w}"]
        with pytest.raises(ValueError, match="Caffe"):
            spatial_pyramid_pool(torch.from_numpy(inputs[f"spp{height}_{h}x{w}"]), levels, rule="caffe")


# ----------------------------------------------------------------------------------------- LRN


@pytest.fixture(scope="module")
def lrn_runs(caffe_oracle) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Caffe LRN, WITHIN_CHANNEL (both settings) and ACROSS_CHANNELS, on inputs in [-300, 300]."""
    rng = np.random.default_rng(5)
    inputs, cases = {}, []
    settings = {
        f"within_{name}": (size, alpha, beta, "WITHIN_CHANNEL") for name, (size, alpha, beta) in WITHIN_SETTINGS.items()
    }
    settings["across"] = (*ACROSS_SETTING, "ACROSS_CHANNELS")
    for setting, (size, alpha, beta, region) in settings.items():
        for channels in (3, 8):
            for h, w in LRN_SIZES:
                case_id = f"lrn_{setting}_{channels}x{h}x{w}"
                inputs[case_id] = rng.uniform(-300, 300, (2, channels, h, w)).astype(np.float32)
                lrn = layer("lrn", "LRN", "data", local_size=size, alpha=alpha, beta=beta, norm_region=region)
                cases.append(caffe_oracle.Case(case_id, inputs[case_id], [lrn], ["lrn"]))
    return inputs, caffe_oracle.run(cases)


def check_lrn(lrn_runs, setting: str, module: torch.nn.Module) -> None:
    """Compare `module` with Caffe's LRN of `setting` on every input; assert the float32 tolerance."""
    inputs, results = lrn_runs
    failures, figures = [], []
    for case_id in (key for key in inputs if key.startswith(f"lrn_{setting}_")):
        expected = results[case_id]["lrn"]
        with torch.no_grad():
            ours = module(torch.from_numpy(inputs[case_id])).numpy()
        assert ours.shape == expected.shape, case_id
        # Normalisation must matter: the output is visibly smaller than the input somewhere.
        assert np.abs(expected).max() < 0.95 * np.abs(inputs[case_id]).max(), case_id
        figures.append(errors(ours, expected))
        if not np.allclose(ours, expected, rtol=LRN_RTOL, atol=LRN_ATOL):
            failures.append(f"{case_id}: {figures[-1]}")
    line = report(
        f"lrn_{setting}",
        cases=len(figures),
        rtol=LRN_RTOL,
        atol=LRN_ATOL,
        max_abs=max(f["max_abs"] for f in figures),
        max_rel_elem=max(f["max_rel_elem"] for f in figures),
        caffe_max=max(f["caffe_max"] for f in figures),
    )
    assert not failures, f"{line}\n" + "\n".join(failures)


@pytest.mark.parametrize("setting", sorted(WITHIN_SETTINGS))
def test_within_channel_lrn_matches_caffe(lrn_runs, setting):
    check_lrn(lrn_runs, f"within_{setting}", WithinChannelLRN(*WITHIN_SETTINGS[setting]))


def test_across_channel_lrn_matches_caffe(lrn_runs):
    check_lrn(lrn_runs, "across", AcrossChannelLRN(*ACROSS_SETTING))


# ----------------------------------------------------------------------------------------- max pooling


@pytest.fixture(scope="module")
def pool_runs(caffe_oracle) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Caffe Pooling MAX (k, s), pad 0, default CEIL rounding, for every H in k..30 and W = H + 5."""
    rng = np.random.default_rng(7)
    inputs, cases = {}, []
    for k, s in POOL_SETTINGS:
        for h in range(k, 31):
            case_id = f"pool_k{k}s{s}_{h}x{h + 5}"
            inputs[case_id] = rng.standard_normal((2, 3, h, h + 5)).astype(np.float32)
            pool = layer("pool", "Pooling", "data", pool="MAX", kernel_size=k, stride=s)
            cases.append(caffe_oracle.Case(case_id, inputs[case_id], [pool], ["pool"]))
    return inputs, caffe_oracle.run(cases)


@pytest.mark.parametrize(("kernel", "stride"), POOL_SETTINGS)
def test_ceil_mode_max_pool_matches_caffe_shape_and_values(pool_runs, kernel, stride):
    inputs, results = pool_runs
    pool = CaffeMaxPool2d(kernel, stride)
    worst, mismatches, cases = 0.0, [], 0
    for h in range(kernel, 31):
        case_id = f"pool_k{kernel}s{stride}_{h}x{h + 5}"
        expected = results[case_id]["pool"]
        ours = pool(torch.from_numpy(inputs[case_id])).numpy()
        cases += 1
        if ours.shape != expected.shape:
            mismatches.append(f"{h}x{h + 5}: shape {ours.shape} vs Caffe {expected.shape}")
            continue
        diff = float(np.abs(ours - expected).max())
        worst = max(worst, diff)
        if diff != 0:
            mismatches.append(f"{h}x{h + 5}: max abs diff {diff}")
    line = report(f"maxpool_k{kernel}_s{stride}", cases=cases, max_abs=worst)
    assert not mismatches, f"{line}\n" + "\n".join(mismatches)


# ----------------------------------------------------------------------------------------- ZF-5 trunk


def zf5_caffe_layers() -> list[dict[str, Any]]:
    """ZF-5 conv1..conv5 + ReLU as Caffe layers (PAPER.md section 3), written independently of our tables."""
    lrn = {"local_size": 3, "alpha": 5e-5, "beta": 0.75, "norm_region": "WITHIN_CHANNEL"}
    pool = {"pool": "MAX", "kernel_size": 3, "stride": 2}
    return [
        layer("conv1", "Convolution", "data", num_output=96, kernel_size=7, stride=2, pad=1),
        layer("relu1", "ReLU", "conv1", in_place=True),
        layer("norm1", "LRN", "relu1", **lrn),
        layer("pool1", "Pooling", "norm1", **pool),
        layer("conv2", "Convolution", "pool1", num_output=256, kernel_size=5, stride=2, pad=0),
        layer("relu2", "ReLU", "conv2", in_place=True),
        layer("norm2", "LRN", "relu2", **lrn),
        layer("pool2", "Pooling", "norm2", **pool),
        layer("conv3", "Convolution", "pool2", num_output=384, kernel_size=3, pad=1),
        layer("relu3", "ReLU", "conv3", in_place=True),
        layer("conv4", "Convolution", "relu3", num_output=384, kernel_size=3, pad=1),
        layer("relu4", "ReLU", "conv4", in_place=True),
        layer("conv5", "Convolution", "relu4", num_output=256, kernel_size=3, pad=1),
        layer("relu5", "ReLU", "conv5", in_place=True),
    ]


@pytest.fixture(scope="module")
def zf5_runs(caffe_oracle) -> tuple[torch.nn.Module, dict[str, np.ndarray], dict[str, Any]]:
    """Our ZF-5 with He-scaled Gaussian weights; Caffe's ZF-5 trunk with the same weights and inputs."""
    model = build_model("zf5").eval()
    torch.manual_seed(0)
    params = {}
    with torch.no_grad():
        for name in ("conv1", "conv2", "conv3", "conv4", "conv5"):
            conv = getattr(model.features, name)
            fan_in = conv.weight[0].numel()
            conv.weight.normal_(0.0, math.sqrt(2.0 / fan_in))  # variance-preserving through ReLU
            conv.bias.normal_(0.0, 1.0)
            params[name] = [conv.weight.numpy().copy(), conv.bias.numpy().copy()]
    rng = np.random.default_rng(11)
    inputs, cases = {}, []
    for n, h, w in ZF5_SIZES:
        case_id = f"zf5_{n}x{h}x{w}"
        inputs[case_id] = rng.uniform(-128, 128, (n, 3, h, w)).astype(np.float32)
        outputs = ["pool1", "pool2", "conv5"]
        cases.append(caffe_oracle.Case(case_id, inputs[case_id], zf5_caffe_layers(), outputs, params))
    return model, inputs, caffe_oracle.run(cases)


def zf5_blobs(model: torch.nn.Module, x: np.ndarray) -> dict[str, np.ndarray]:
    """Our pool1, pool2 and conv5 (after ReLU) for input x."""
    blobs, y = {}, torch.from_numpy(x)
    with torch.no_grad():
        for name, module in model.features.named_children():
            y = module(y)
            if name in ("pool1", "pool2"):
                blobs[name] = y.numpy().copy()
    blobs["conv5"] = y.numpy()
    return blobs


@pytest.mark.parametrize(("n", "h", "w"), ZF5_SIZES)
def test_zf5_conv_stack_matches_caffe_with_identical_weights(zf5_runs, n, h, w):
    model, inputs, results = zf5_runs
    case_id = f"zf5_{n}x{h}x{w}"
    expected = results[case_id]
    ours = zf5_blobs(model, inputs[case_id])
    if (h, w) in ZF5_CONV5:
        assert expected["conv5"].shape == (n, 256, *ZF5_CONV5[h, w])
    failures = []
    for blob in ("pool1", "pool2", "conv5"):
        assert ours[blob].shape == expected[blob].shape, f"{case_id} {blob}"
        figures = errors(ours[blob], expected[blob])
        line = report(
            f"zf5_{blob}",
            size=f"{n}x3x{h}x{w}",
            shape=list(expected[blob].shape),
            tol_rel_to_max=ZF5_REL_TOL,
            **figures,
        )
        assert figures["caffe_max"] > 1.0, f"activations vanished: {line}"
        if figures["max_abs"] > ZF5_REL_TOL * figures["caffe_max"]:
            failures.append(line)
    assert not failures, "\n".join(failures)
