"""Caffe interop against the real BVLC Caffe oracle: imports, exports, ONNX of imports, and the memory of an import.

Every expected value is Caffe's output on weights Caffe made (or PyTorch's, for what sppnet exports). Figures are
printed as JSON lines (pytest -s) and appended to $SPPNET_PARITY_REPORT when set: they make the parity table.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch

from sppnet.core.bins import spp_bins
from sppnet.core.errors import InvalidInput
from sppnet.core.manifest import read_export_manifest, read_run_info
from sppnet.core.models import build_model
from sppnet.core.runs import load_model, save_trained
from sppnet.export.caffe import export_caffe, import_caffe
from sppnet.export.onnx_export import ExportConfig, export_onnx, source_from_run

pytestmark = pytest.mark.caffe

TOL = 1e-5  # max |ours - caffe| / max |caffe| on the logits
LAYER_SETS = {
    "v2": "Input; Conv(pad, stride, group, no bias); ReLU(slope 0.1); Pool AVE pad; LRN within & across(k 2); "
    "Pool MAX k2 s2 p1 (last-window clip); SPP(h 3); IP (one transposed); Dropout; Softmax",
    "v1": "input_dim; Conv; ReLU; LRN across; Pool MAX pad 1; Pool AVE (CEIL overhang); global AVE pool; IP; "
    "Dropout; Softmax",
    "v0_36": "V0 conv(pad, group, no bias)/relu/pool/lrn(k 2); 2-level pool pyramid (flatten, concat); IP; dropout",
    "v0_44": "as v0_36, declared at 44x44",
    "release": "release ZF-5 layout at 1/8 width: V0 hybrid, 4-pool pyramid k3s2/k5s4/k7s7/k13s13, "
    "dropout scaled at test",
}


def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(x)).numpy()


@pytest.fixture(scope="module")
def imported(caffe_nets, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each Caffe net imported from its prototxt and Caffe's saved weights."""
    root = tmp_path_factory.mktemp("imported")
    return {name: Path(import_caffe(net.prototxt, net.caffemodel, root / name)).parent for name, net in
            caffe_nets.items()}


@pytest.mark.parametrize("name", ["v2", "v1", "v0_36", "v0_44", "release"])
def test_imported_net_gives_caffes_logits_at_every_size(caffe_nets, imported, parity, name):
    net = caffe_nets[name]
    info = read_run_info(imported[name])
    model = load_model(imported[name])
    failures = []
    for size, expected in net.logits.items():
        figures = parity.errors(logits(model, net.inputs[size]), expected)
        line = parity.report(
            "caffe_import",
            net=name,
            format=info.origin["format"],
            caffemodel=info.origin["caffemodel_format"],
            layers=LAYER_SETS[name],
            size=f"{size[0]}x{size[1]}",
            tol=TOL,
            **figures,
        )
        assert figures["caffe_max"] > 0.1, f"logits vanished: {line}"
        if figures["rel_to_max"] > TOL:
            failures.append(line)
    assert not failures, "\n".join(failures)


def test_formats_and_pyramids_are_recorded_as_read(imported):
    origins = {name: read_run_info(run).origin for name, run in imported.items()}
    assert {name: o["format"] for name, o in origins.items()} == {
        "v2": "V2", "v1": "V1", "v0_36": "V0", "v0_44": "V0", "release": "V0-release"
    }  # fmt: skip
    assert origins["v0_36"]["caffemodel_format"] == "V0" and origins["v1"]["caffemodel_format"] == "V1"
    assert origins["v2"]["pyramid"]["rule"] == "caffe" and origins["v2"]["pyramid"]["levels"] == [1, 2, 4]
    assert origins["v1"]["pyramid"] == {"kind": "global", "layer": "pool3", "rule": "adaptive"}
    assert origins["v0_36"]["pyramid"]["rule"] == "pools@18:1=k18s18,3=k7s6"
    assert origins["release"]["pyramid"]["rule"] == "pools@13:1=k13s13,2=k7s7,3=k5s4,6=k3s2"
    assert all(o["softmax_dropped"] == "prob" for o in origins.values())
    assert origins["release"]["dropout"]["scaling"] == "test" and origins["v2"]["dropout"]["scaling"] == "train"
    card = read_run_info(imported["release"]).card
    assert card.spec is not None and card.model.dropout_scaling == "test" and card.model.levels == (1, 2, 3, 6)
    assert card.preprocess.mean_bgr == (128.0, 128.0, 128.0) and card.preprocess.scale == 1.0


def test_release_pyramid_keeps_the_files_k7_s7_level_at_13_and_is_adaptive_elsewhere(imported):
    rule = read_run_info(imported["release"]).card.rule
    assert spp_bins(13, 2, rule) == [(0, 7), (7, 13)] != spp_bins(13, 2, "adaptive")
    assert spp_bins(13, 6, rule) == [(0, 3), (2, 5), (4, 7), (6, 9), (8, 11), (10, 13)]
    for a in (5, 10, 12, 14, 20):
        assert all(spp_bins(a, n, rule) == spp_bins(a, n, "adaptive") for n in (1, 2, 3, 6))
    # at another size the model pools adaptively: brute force over conv5 of a 180x180 input (10x10)
    model = load_model(imported["release"])
    x = torch.randn(1, 3, 180, 180) * 100
    with torch.no_grad():
        conv5 = model.forward_features(x)
        brute = torch.cat(
            [
                torch.stack([conv5[:, :, r0:r1, c0:c1].amax((2, 3)) for r0, r1 in spp_bins(10, n, "adaptive")
                             for c0, c1 in spp_bins(10, n, "adaptive")], 2).flatten(1)
                for n in (1, 2, 3, 6)
            ],
            1,
        )
        assert torch.equal(model.pool(conv5), brute)


def test_release_dropout_scaling_is_detected_and_matters(caffe_nets, tmp_path):
    net = caffe_nets["release"]
    run = Path(import_caffe(net.prototxt, net.caffemodel, tmp_path / "bvlc", dropout_scaling="train")).parent
    assert read_run_info(run).origin["dropout"]["scaling"] == "train"
    x = net.inputs[224, 224]
    off = np.abs(logits(load_model(run), x) - net.logits[224, 224]).max() / np.abs(net.logits[224, 224]).max()
    assert off > 1e-2, "reading the release's dropout as BVLC's must change its logits"


def ort_logits(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(["logits"], {"image": x})[0]


@pytest.mark.parametrize("name", ["v2", "v1", "release"])
def test_imported_model_exported_to_onnx_runs_caffes_logits_in_onnx_runtime(
    caffe_nets, imported, parity, tmp_path, name
):
    net = caffe_nets[name]
    scales = tuple(net.logits)
    dynamic = name != "v2"
    if not dynamic:  # v2's AVE pool1 divides border windows by size-dependent counts: no symbolic-size form
        with pytest.raises(InvalidInput, match=r"pool pool1 \(k3 s2 p1\): AVE pooling with padding.*--no-dynamic"):
            export_onnx(source_from_run(imported[name]), tmp_path / "refused", ExportConfig(scales=scales,
                        precisions=("fp32",)))
    out = tmp_path / "onnx"
    export_onnx(source_from_run(imported[name]), out, ExportConfig(scales=scales, dynamic=dynamic,
                precisions=("fp32",), max_size=256))
    files = read_export_manifest(out).files
    failures = []
    for entry in files:
        for size in scales if entry.kind == "dynamic" else [entry.scale]:
            figures = parity.errors(ort_logits(out / entry.file, net.inputs[size]), net.logits[size])
            line = parity.report("caffe_import_onnx", net=name, onnx=entry.spp_form, size=f"{size[0]}x{size[1]}",
                                 tol=TOL, **figures)
            if figures["rel_to_max"] > TOL:
                failures.append(line)
    if dynamic:  # sizes Caffe cannot run this net at: the dynamic graph against the imported PyTorch model
        model = load_model(imported[name])
        path = out / next(f.file for f in files if f.kind == "dynamic")
        for h, w in ((180, 180), (250, 203)) if name == "release" else ((37, 90),):
            x = np.random.default_rng(h).standard_normal((1, 3, h, w)).astype(np.float32) * 50
            figures = parity.errors(ort_logits(path, x), logits(model, x))
            line = parity.report("import_onnx_vs_pytorch", net=name, size=f"{h}x{w}", tol=TOL, **figures)
            if figures["rel_to_max"] > TOL:
                failures.append(line)
    assert not failures, "\n".join(failures)


# ------------------------------------------------------------------------------ sppnet's networks to Caffe

# (network, size, extra config): zf5 at full width; the others as their CPU presets, with the caffe rule written
# as BVLC's SPP layer (levels 1, 2, 4) and as padded Pooling layers (4, 2, 1), and the release's dropout.
PAPER = [
    ("zf5", 224, {}),
    ("convnet5_cpu", 112, {"rule": "caffe", "levels": (1, 2, 4)}),
    ("overfeat5_cpu", 168, {"rule": "caffe", "levels": (4, 2, 1)}),
    ("overfeat7_cpu", 160, {"dropout_scaling": "test"}),
]


def he_init(model: torch.nn.Module, seed: int) -> None:
    """He-scaled Gaussian weights and Gaussian biases, so activations neither vanish nor explode."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            fan_in = p[0].numel() if p.dim() > 1 else 1
            std = math.sqrt(2.0 / fan_in) if p.dim() > 1 else 0.1
            p.copy_(torch.randn(p.shape, generator=generator) * std)


@pytest.fixture(scope="module")
def paper_exports(caffe_oracle, tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each network saved as a run, exported to Caffe, run there on two inputs, and imported back."""
    root = tmp_path_factory.mktemp("paper")
    exports, cases = {}, []
    for i, (network, size, extra) in enumerate(PAPER):
        kwargs = {k: v for k, v in extra.items() if k != "dropout_scaling"}
        model = build_model(network, num_classes=17, **kwargs).eval()
        if "dropout_scaling" in extra:
            from dataclasses import replace

            from sppnet.core.models import SPPNet

            model = SPPNet(model.spec, replace(model.config, dropout_scaling=extra["dropout_scaling"])).eval()
        he_init(model, i)
        run = root / network / "run"
        save_trained(run, model, classes=[f"c{j}" for j in range(17)], preprocess=model.spec.default_preprocess())
        prototxt, caffemodel = export_caffe(run, root / network / "caffe", size=(size, size))
        x = np.random.default_rng(i).standard_normal((2, 3, size, size)).astype(np.float32) * 40
        last = [name for name, m in model.classifier.named_children() if isinstance(m, torch.nn.Linear)][-1]
        cases.append(caffe_oracle.Case(network, x, [], [last], prototxt=str(prototxt), caffemodel=str(caffemodel)))
        exports[network] = {"run": run, "prototxt": prototxt, "caffemodel": caffemodel, "x": x, "blob": last,
                            "size": size}
    results = caffe_oracle.run(cases)
    for network, entry in exports.items():
        entry["caffe"] = results[network][entry["blob"]]
        entry["reimported"] = Path(import_caffe(entry["prototxt"], entry["caffemodel"], root / network / "back")).parent
    return exports


@pytest.mark.parametrize("network", [p[0] for p in PAPER])
def test_paper_network_exported_to_caffe_runs_pytorchs_logits(paper_exports, parity, network):
    entry = paper_exports[network]
    ours = logits(load_model(entry["run"]), entry["x"])
    figures = parity.errors(ours, entry["caffe"])
    config = load_model(entry["run"]).config
    line = parity.report("caffe_export", network=network, size=f"{entry['size']}x{entry['size']}",
                         rule=config.rule, levels=list(config.levels), dropout=config.dropout_scaling, tol=TOL,
                         caffemodel_mb=round(entry["caffemodel"].stat().st_size / 2**20, 1), **figures)
    assert figures["caffe_max"] > 0.1 and figures["rel_to_max"] <= TOL, line


@pytest.mark.parametrize("network", [p[0] for p in PAPER])
def test_paper_network_imported_back_has_bit_identical_weights_and_the_same_outputs(paper_exports, network):
    entry = paper_exports[network]
    original, back = load_model(entry["run"]), load_model(entry["reimported"])
    ours, theirs = original.state_dict(), back.state_dict()
    assert ours.keys() == theirs.keys()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert back.config.levels == original.config.levels
    assert back.config.dropout_scaling == original.config.dropout_scaling
    assert np.array_equal(logits(back, entry["x"]), logits(original, entry["x"]))


def test_importing_the_full_zf5_holds_about_the_caffemodel_once(paper_exports, parity, tmp_path):
    entry = paper_exports["zf5"]
    script = Path(__file__).with_name("peak_memory.py")
    command = [sys.executable, str(script), str(entry["prototxt"]), str(entry["caffemodel"]), str(tmp_path / "run")]
    result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
    parity.report("import_peak_memory", command=" ".join(command[1:]), **result)
    assert result["caffemodel_mb"] > 250
    assert result["peak_over_baseline_mb"] <= 1.5 * result["caffemodel_mb"]  # the brief allows 2x


def test_the_readmes_release_story_runs_from_the_command_line(caffe_nets, tmp_path, capsys):
    """caffe import -> export --scales 224 -> infer (ONNX Runtime) -> build, as the README tells it, on the release
    layout; the served answer is PyTorch's on the imported weights (which equal Caffe's: the parity tests above)."""
    from PIL import Image

    from sppnet.cli import main
    from sppnet.core.manifest import read_engine_manifest

    net = caffe_nets["release"]
    run, onnx, engines, photo = tmp_path / "run", tmp_path / "onnx", tmp_path / "engines", tmp_path / "photo.png"
    rgb = np.random.default_rng(7).integers(0, 256, (224, 224, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(photo)
    assert main(["caffe", "import", str(net.prototxt), str(net.caffemodel), "--out", str(run)]) == 0
    assert main(["export", "--checkpoint", str(run), "--scales", "224", "--out", str(onnx)]) == 0
    capsys.readouterr()
    assert main(["infer", str(photo), "--engines", str(onnx), "--policy", "none", "--topk", "1", "--json"]) == 0
    served = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert served["route"]["model"].endswith("_224x224_fp32.onnx")

    bgr = rgb[:, :, ::-1].astype(np.float32) - 128.0  # the release's preprocessing: BGR, scalar mean 128, scale 1
    probs = torch.softmax(torch.from_numpy(logits(load_model(run), bgr.transpose(2, 0, 1)[None].copy())), 1)[0]
    classes = read_run_info(run).card.classes
    assert served["topk"][0]["class"] == classes[int(probs.argmax())]
    assert served["topk"][0]["p"] == pytest.approx(float(probs.max()), abs=1e-5)

    pytest.importorskip("tensorrt_rtx")
    assert main(["build", "--onnx", str(onnx), "--out", str(engines), "--precision", "fp32"]) == 0
    built = read_engine_manifest(engines)
    assert {e.kind for e in built.files} == {"fixed", "dynamic"}
