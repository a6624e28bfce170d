"""The paper's networks: map sizes, parameter counts and structure against an independent computation."""

from __future__ import annotations

import math

import pytest
import torch

from sppnet.core import NETWORKS, build_model, get_network, min_input_size
from sppnet.core.networks import register

# Written from PAPER.md section 3 (paper Table 1), independently of sppnet.core.models:
# ("conv", out, kernel, stride, pad) and ("pool", kernel, stride); pads for Convnet*-5 and Overfeat are the
# ones the paper's stated map sizes need under Caffe's rounding.
PAPER_TABLES = {
    "zf5": [
        ("conv", 96, 7, 2, 1),
        ("pool", 3, 2),
        ("conv", 256, 5, 2, 0),
        ("pool", 3, 2),
        ("conv", 384, 3, 1, 1),
        ("conv", 384, 3, 1, 1),
        ("conv", 256, 3, 1, 1),
    ],
    "convnet5": [
        ("conv", 96, 11, 4, 2),
        ("conv", 256, 5, 1, 2),
        ("pool", 3, 2),
        ("conv", 384, 3, 1, 1),
        ("pool", 3, 2),
        ("conv", 384, 3, 1, 1),
        ("conv", 256, 3, 1, 1),
    ],
    "overfeat5": [
        ("conv", 96, 7, 2, 0),
        ("pool", 3, 3),
        ("conv", 256, 5, 1, 1),
        ("pool", 2, 2),
        *[("conv", 512, 3, 1, 1)] * 3,
    ],
    "overfeat7": [
        ("conv", 96, 7, 2, 0),
        ("pool", 3, 3),
        ("conv", 256, 5, 1, 1),
        ("pool", 2, 2),
        *[("conv", 512, 3, 1, 1)] * 5,
    ],
}
BASELINE_POOL5 = {"zf5": (3, 2), "convnet5": (3, 2), "overfeat5": (3, 3), "overfeat7": (3, 3)}
# The paper's conv5 (last conv) sizes at 224 and, for ZF-5, at 180 (PAPER.md section 3).
PAPER_CONV5 = {
    ("zf5", 224): 13,
    ("zf5", 180): 10,
    ("convnet5", 224): 13,
    ("overfeat5", 224): 18,
    ("overfeat7", 224): 18,
}


def caffe_pool(a: int, k: int, s: int) -> int:
    return math.ceil((a - k) / s) + 1


def trace(table: list[tuple], a: int) -> list[int]:
    sizes = []
    for layer in table:
        if layer[0] == "conv":
            _, _, k, s, p = layer
            a = (a + 2 * p - k) // s + 1
        else:
            a = caffe_pool(a, layer[1], layer[2])
        sizes.append(a)
    return sizes


def param_count(table: list[tuple], fc_in: int, fc: int = 4096, classes: int = 1000) -> int:
    total, channels = 0, 3
    for layer in table:
        if layer[0] == "conv":
            _, out, k, _, _ = layer
            total += channels * out * k * k + out
            channels = out
    return total + fc_in * fc + fc + fc * fc + fc + fc * classes + classes


def _shapes(model: torch.nn.Module, h: int, w: int) -> list[tuple[int, ...]]:
    shapes = []
    for module in model.features:
        if isinstance(module, torch.nn.Conv2d | torch.nn.MaxPool2d):
            module.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
    model.features(torch.empty(1, 3, h, w, device="meta"))
    return shapes


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
@pytest.mark.parametrize("size", [224, 180])
def test_map_sizes_and_parameter_counts_match_the_paper_tables(name: str, size: int) -> None:
    table = PAPER_TABLES[name]
    with torch.device("meta"):
        spp_model = build_model(name)
        baseline = build_model(name, spp=False)
    expected = trace(table, size)
    channels = [layer[1] for layer in table]
    for i in range(len(table)):
        if table[i][0] == "pool":
            channels[i] = channels[i - 1]
    assert _shapes(spp_model, size, size) == [(c, a, a) for c, a in zip(channels, expected, strict=True)]
    if (name, size) in PAPER_CONV5:
        assert expected[-1] == PAPER_CONV5[name, size]

    conv5_channels = table[-1][1]
    assert sum(p.numel() for p in spp_model.parameters()) == param_count(table, conv5_channels * 50)
    pool5 = caffe_pool(trace(table, 224)[-1], *BASELINE_POOL5[name])
    assert pool5 == 6  # the baseline's pool5 gives 6x6 at 224 (PAPER.md section 3)
    assert sum(p.numel() for p in baseline.parameters()) == param_count(table, conv5_channels * 36)


def test_zf5_fc6_takes_12800_spp_features() -> None:
    with torch.device("meta"):
        assert build_model("zf5").classifier.fc6.in_features == 256 * (36 + 9 + 4 + 1) == 12800


@pytest.mark.parametrize("name", sorted(n for n, spec in NETWORKS.items() if spec.preset_of))
def test_every_cpu_preset_classifies_images_of_any_size(name: str) -> None:
    spec = get_network(name)
    model = build_model(name, num_classes=10).eval()
    for h, w in [(spec.input_size, spec.input_size), *[(s, s) for s in spec.train_sizes], (97, 141), (140, 60)]:
        assert model(torch.randn(2, 3, h, w)).shape == (2, 10)
    assert (model.features(torch.randn(1, 3, 100, 100)) >= 0).all()  # conv5 after its ReLU


@pytest.mark.parametrize("name", sorted(PAPER_TABLES))
def test_cpu_presets_keep_the_layer_table_with_fewer_channels(name: str) -> None:
    full, cpu = get_network(name), get_network(f"{name}_cpu")
    assert cpu.preset_of == name
    assert len(full.layers) == len(cpu.layers)
    for a, b in zip(full.layers, cpu.layers, strict=True):
        assert type(a) is type(b)
        if hasattr(a, "channels"):
            assert (a.kernel, a.stride, a.pad) == (b.kernel, b.stride, b.pad)
            assert b.channels < a.channels
        else:
            assert a == b
    assert max(cpu.train_sizes) < max(full.train_sizes)


def test_paper_networks_use_caffe_gaussian_weights_and_constant_biases() -> None:
    torch.manual_seed(0)
    model = build_model("zf5")
    conv2 = model.features.conv2
    assert abs(conv2.weight.std().item() - 0.01) < 2e-4 and abs(conv2.weight.mean().item()) < 2e-4
    assert torch.all(model.features.conv1.bias == 0) and torch.all(conv2.bias == 1)
    assert torch.all(model.classifier.fc6.bias == 1) and torch.all(model.classifier.fc7.bias == 1)
    assert torch.all(model.classifier.fc8.bias == 0)
    assert get_network("zf5").input_scale == 1.0


def test_cpu_presets_use_caffe_msra_weights_zero_biases_and_scaled_inputs() -> None:
    torch.manual_seed(0)
    model = build_model("zf5_cpu")
    for name, layer in [*model.features.named_children(), *model.classifier.named_children()]:
        if isinstance(layer, torch.nn.Conv2d | torch.nn.Linear):
            fan_in = layer.weight[0].numel()  # in_channels * k * k, or in_features
            expected = 0.01 if name == "fc8" else math.sqrt(2 / fan_in)
            assert abs(layer.weight.std().item() / expected - 1) < 0.1, name
            assert torch.all(layer.bias == 0), name
    assert get_network("zf5_cpu").input_scale == 1 / 64


def test_dropout_half_on_fc6_and_fc7_only_in_training() -> None:
    model = build_model("zf5_cpu", num_classes=5)
    assert model.classifier.drop6.p == model.classifier.drop7.p == 0.5
    x = torch.randn(2, 3, 112, 112)
    model.eval()
    assert torch.equal(model(x), model(x))


def test_zf5_uses_within_channel_lrn_and_the_others_across_channel() -> None:
    names = {name: type(build_model(f"{name}_cpu").features.norm1).__name__ for name in PAPER_TABLES}
    assert names == {
        "zf5": "WithinChannelLRN",
        "convnet5": "AcrossChannelLRN",
        "overfeat5": "AcrossChannelLRN",
        "overfeat7": "AcrossChannelLRN",
    }


def test_no_spp_baseline_refuses_other_sizes_with_a_clear_error() -> None:
    model = build_model("zf5_cpu", spp=False, num_classes=3).eval()
    assert model(torch.randn(1, 3, 112, 112)).shape == (1, 3)
    with pytest.raises(ValueError, match="use an SPP model"):
        model(torch.randn(1, 3, 90, 90))


def test_too_small_inputs_and_wrong_channels_raise_clear_errors() -> None:
    model = build_model("zf5_cpu", num_classes=3)
    smallest = min_input_size(get_network("zf5_cpu"))
    assert model(torch.randn(1, 3, smallest, smallest)).shape == (1, 3)
    with pytest.raises(ValueError, match=f"give at least {smallest}x{smallest}"):
        model(torch.randn(1, 3, smallest - 1, smallest))
    with pytest.raises(ValueError, match=r"expects \(N, 3, H, W\)"):
        model(torch.randn(1, 4, 112, 112))


def test_unknown_networks_and_duplicate_registrations_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown network 'alexnet': choose one of zf5"):
        build_model("alexnet")
    with pytest.raises(ValueError, match="already registered"):
        register(get_network("zf5"))


@pytest.mark.parametrize(("name", "stride"), [("zf5", 16), ("convnet5", 16), ("overfeat5", 12), ("overfeat7", 12)])
def test_feature_stride_is_the_product_of_conv_and_pool_strides(name: str, stride: int) -> None:
    from sppnet.core.networks import feature_stride

    table = PAPER_TABLES[name]
    assert feature_stride(get_network(name)) == math.prod(
        layer[3] if layer[0] == "conv" else layer[2] for layer in table
    )
    assert math.prod(layer[3] if layer[0] == "conv" else layer[2] for layer in table) == stride


@pytest.mark.parametrize("name", ["zf5_cpu", "convnet5_cpu", "overfeat7_cpu"])
def test_the_torch_free_geometry_gives_the_conv5_size_the_network_computes(name: str) -> None:
    from sppnet.core.caffe_shapes import feature_map_size
    from sppnet.core.networks import geometry, min_input_size

    model = build_model(name, num_classes=2).eval()
    smallest = min_input_size(model.spec)
    for h, w in [(smallest, smallest), (smallest, 3 * smallest), (97, 131), (224, 180)]:
        with torch.no_grad():
            conv5 = model.features(torch.zeros(1, 3, h, w)).shape[2:]
        assert feature_map_size(geometry(model.spec), h, w) == tuple(conv5), (h, w)
    assert feature_map_size(geometry(model.spec), smallest - 1, smallest - 1) is None
