"""Compiled PyTorch engines on the CPU: packages built from the shared export (one fixed scale, vectorised kernels;
the dynamic model, scalar kernels to keep the build short), their manifests, exactness against eager PyTorch at
many sizes the example input did not have, the runtime serving them, and the refusal of packages built by another
torch, for another device or instruction set, or changed after the build."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from sppnet.core.atomic import sha256_file
from sppnet.core.errors import BackendError, BuildError, DeviceUnavailable, InvalidInput
from sppnet.core.manifest import (
    Builder,
    ManifestError,
    read_engine_manifest,
    read_export_manifest,
    write_manifest,
)
from sppnet.core.runs import load_model
from sppnet.engines.backends import aoti
from sppnet.engines.backends.aoti import AOTIRunner, check_package
from sppnet.engines.compare import compare
from sppnet.engines.model_set import load_model_set
from sppnet.engines.parity import random_images
from sppnet.engines.routing import Policy
from sppnet.engines.runtime import Runtime, default_precision, gpu_requested, native_backend
from sppnet.export.aoti_builder import Job, build_aoti_engines, plan_jobs, verify_package, verify_sizes

from .conftest import SCALES


@pytest.fixture(scope="module")
def packages(runtime_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two engine directories from the shared export: the 112x112 package and the dynamic package (fp32)."""
    root = tmp_path_factory.mktemp("aoti")
    fixed = build_aoti_engines(runtime_onnx, root / "fixed", precisions=["fp32"], kinds=["fixed"], scales=[(112, 112)])
    dynamic = build_aoti_engines(
        runtime_onnx, root / "dynamic", precisions=["fp32"], kinds=["dynamic"], vectorize=False
    )
    return {"fixed": fixed.parent, "dynamic": dynamic.parent}


@pytest.fixture(scope="module")
def eager(trained_run: Path) -> torch.nn.Module:
    return load_model(trained_run)


def logits(model: torch.nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
        return model(torch.from_numpy(x)).numpy()


def test_the_manifest_mirrors_the_export_and_names_the_builder_and_the_target(
    packages: dict[str, Path], runtime_onnx: Path
) -> None:
    export = read_export_manifest(runtime_onnx)
    for kind, directory in packages.items():
        manifest = read_engine_manifest(directory)  # every file's sha256 checked
        assert manifest.builder == Builder("torch_aoti", torch.__version__)
        assert manifest.target["device"] == "cpu" and manifest.target["channels_last"] is True
        assert manifest.target["isa"] == (torch.backends.cpu.get_cpu_capability() if kind == "fixed" else "scalar")
        assert manifest.source_manifest_sha256 == sha256_file(runtime_onnx / "manifest.json")
        assert manifest.card == export.card and manifest.sizes == export.sizes
        (entry,) = manifest.files
        source = next(
            f for f in export.files if (f.kind, f.precision) == (kind, "fp32") and f.scale in (None, (112, 112))
        )
        assert (entry.kind, entry.scale, entry.precision, entry.spp_form) == (kind, source.scale, "fp32", "masked")
        assert entry.profiles == source.profiles and entry.file.endswith(".pt2") and entry.seconds > 0
        assert native_backend(load_model_set(directory)) == "torch_aoti"


def test_the_builder_checked_each_package_against_eager_pytorch_at_sizes_off_the_example(
    packages: dict[str, Path],
) -> None:
    import json

    record = json.loads((packages["dynamic"] / "verify.json").read_text())
    (rows,) = record["packages"].values()
    sizes = {tuple(r["size"]) for r in rows}
    assert len(sizes) >= 8 and (112, 112) not in sizes and all(r["max_rel"] <= 1e-4 for r in rows)
    assert any(h % 2 and w != h for h, w in sizes)  # odd and elongated sizes among them


def test_a_fixed_package_equals_eager_pytorch_and_refuses_other_shapes(
    packages: dict[str, Path], eager: torch.nn.Module
) -> None:
    manifest = read_engine_manifest(packages["fixed"])
    (entry,) = manifest.files
    rng = np.random.default_rng(0)
    with AOTIRunner(packages["fixed"] / entry.file, manifest, entry) as runner:
        for batch in (1, 3, entry.max_batch):
            x = random_images(rng, batch, 112, 112, manifest.card.preprocess.scale)
            got = runner.infer({"image": x})["logits"]
            row = compare(got, logits(eager, x), name=entry.file, precision="fp32", size=(112, 112))
            assert row.ok and row.top1_agree == 1.0, row
        with pytest.raises(BackendError, match="takes float32"):
            runner.infer({"image": random_images(rng, 1, 90, 90, 1.0)})
        with pytest.raises(InvalidInput, match=r"takes \(1\.\.8, 3, H, W\)"):
            runner.run(torch.zeros(entry.max_batch + 1, 3, 112, 112))


def test_the_dynamic_package_equals_eager_pytorch_at_many_sizes_it_was_not_traced_at(
    packages: dict[str, Path], eager: torch.nn.Module
) -> None:
    manifest = read_engine_manifest(packages["dynamic"])
    (entry,) = manifest.files
    low, high = manifest.sizes.min, manifest.sizes.max
    rng = np.random.default_rng(1)
    # the smallest input (conv5 1x1), conv5 of one cell on one side, odd, elongated and the largest sizes
    sizes = [(low, low), (low, high), (high, low), (46, 47), (47, 63), (101, 37 + 2), (223, 129), (high, high)]
    sizes += [(int(h), int(w)) for h, w in rng.integers(low, 400, (10, 2))]
    with AOTIRunner(packages["dynamic"] / entry.file, manifest, entry) as runner:
        for i, (h, w) in enumerate(sizes):
            x = random_images(rng, 1 + i % 2, h, w, manifest.card.preprocess.scale)
            row = compare(
                runner.infer({"image": x})["logits"], logits(eager, x), name="dyn", precision="fp32", size=(h, w)
            )
            assert row.ok and row.top1_agree == 1.0, row
        with pytest.raises(InvalidInput, match="route the image first"):
            runner.run(torch.zeros(1, 3, high + 1, 64))


def test_the_runtime_serves_compiled_packages_like_the_onnx_export(
    packages: dict[str, Path], runtime_onnx: Path
) -> None:
    rng = np.random.default_rng(2)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in [(112, 112), (97, 131), (41, 300), (64, 40)]]
    with Runtime(runtime_onnx, policy=Policy("none")) as reference:
        want = reference.infer(images)
    with Runtime(packages["dynamic"], policy=Policy("none")) as rt:
        assert {type(r) for r in rt.runners.values()} == {AOTIRunner}
        for results in (rt.infer(images), rt.stream(images)):
            for got, expected in zip(results, want, strict=True):
                assert got.error is None and got.route.kind == "dynamic"
                assert (got.route.height, got.route.width) == (expected.route.height, expected.route.width)
                assert compare(got.logits[None], expected.logits[None], name="rt", precision="fp32", size=(0, 0)).ok
    with pytest.raises(InvalidInput, match="for torch_aoti, which the onnxruntime backend cannot run"):
        Runtime(packages["dynamic"], backend="onnxruntime")


def rewritten(directory: Path, tmp_path: Path, **changes: object) -> Path:
    """A copy of an engine directory whose manifest says something else (rewritten with its content hash)."""
    copy = Path(shutil.copytree(directory, tmp_path / f"copy{len(list(tmp_path.iterdir()))}"))
    manifest = read_engine_manifest(copy)
    write_manifest(copy, dataclasses.replace(manifest, **changes))
    return copy


def activate(directory: Path, **options: object) -> None:
    manifest = read_engine_manifest(directory)
    (entry,) = manifest.files
    AOTIRunner(directory / entry.file, manifest, entry, **options).activate().deactivate()


def test_packages_of_another_torch_or_device_are_refused_with_the_fix(
    packages: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed = packages["fixed"]
    target = read_engine_manifest(fixed).target
    other = rewritten(fixed, tmp_path, builder=Builder("torch_aoti", "2.11.0+cu130"))
    with pytest.raises(
        BackendError, match=r"compiled by torch 2\.11\.0\+cu130 and this is torch .*--builder torch_aoti"
    ):
        activate(other)
    cuda = rewritten(fixed, tmp_path, target=target | {"device": "cuda", "capability": "9.0", "name": "NVIDIA H200"})
    with pytest.raises(BackendError, match="compiled for cuda, not cpu: pass --device cuda or rebuild"):
        activate(cuda, device="cpu")
    if not torch.cuda.is_available():
        with pytest.raises(DeviceUnavailable, match="sees no CUDA GPU for the cuda packages"):
            activate(cuda)
    monkeypatch.setattr(aoti, "_cpu_isa", lambda: "DEFAULT")
    with pytest.raises(BackendError, match=f"compiled for CPU instructions {target['isa']}, this CPU has DEFAULT"):
        activate(fixed)
    activate(packages["dynamic"])  # scalar kernels run on any CPU of the machine's architecture
    trt = dataclasses.replace(read_engine_manifest(fixed), builder=Builder("tensorrt_rtx", "1.2"))
    with pytest.raises(BackendError, match=r"built by tensorrt_rtx 1\.2, not torch_aoti: serve them with --backend"):
        check_package(trt, "cpu")


def test_a_gpu_of_another_architecture_is_refused(packages: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    manifest = read_engine_manifest(packages["fixed"])
    manifest = dataclasses.replace(manifest, target={"device": "cuda", "capability": "9.0", "name": "NVIDIA H200"})
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=0: (8, 9))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda index=0: "NVIDIA L4")
    with pytest.raises(BackendError, match=r"compute capability 9\.0 \(NVIDIA H200\), this GPU is 8\.9 \(NVIDIA L4\)"):
        check_package(manifest, "cuda")


def test_a_changed_package_is_refused(packages: dict[str, Path], tmp_path: Path) -> None:
    copy = Path(shutil.copytree(packages["fixed"], tmp_path / "tampered"))
    (entry,) = read_engine_manifest(copy).files
    data = bytearray((copy / entry.file).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (copy / entry.file).write_bytes(bytes(data))
    with pytest.raises(ManifestError, match=r"does not match .* the file was changed or truncated"):
        Runtime(copy)
    manifest = read_engine_manifest(copy, verify=False)
    with pytest.raises(ManifestError, match="does not match"):
        AOTIRunner(copy / entry.file, manifest, entry).activate()


def test_the_builder_refuses_what_it_cannot_build_and_keeps_no_wrong_package(
    packages: dict[str, Path], runtime_onnx: Path, tmp_path: Path, trained_run: Path
) -> None:
    if not torch.cuda.is_available():
        with pytest.raises(InvalidInput, match="sees no CUDA GPU here; build on the GPU machine"):
            build_aoti_engines(runtime_onnx, tmp_path / "x", device="cuda")
    with pytest.raises(InvalidInput, match=r"precisions \['int8'\] not recognised"):
        build_aoti_engines(runtime_onnx, tmp_path / "x", precisions=["int8"])
    with pytest.raises(InvalidInput, match="is the ONNX directory"):
        build_aoti_engines(runtime_onnx, runtime_onnx)
    with pytest.raises(InvalidInput, match="no fixed models at 64x64"):
        build_aoti_engines(runtime_onnx, tmp_path / "x", kinds=["fixed"], scales=[(64, 64)])
    # a package that differs from eager PyTorch fails its check (here: weights of another model)
    manifest = read_engine_manifest(packages["fixed"])
    (entry,) = manifest.files
    job = Job("fixed", (112, 112), "fp32", entry.profiles)
    other = load_model(trained_run)
    with torch.no_grad():
        other.classifier.fc8.bias += 1.0
    with pytest.raises(BuildError, match=r"differs from eager PyTorch at 1x3x112x112 .* the package is not kept"):
        verify_package(packages["fixed"] / entry.file, other, job, "cpu", input_scale=manifest.card.preprocess.scale)


def test_jobs_and_check_sizes_cover_the_export(runtime_onnx: Path) -> None:
    export = read_export_manifest(runtime_onnx)
    jobs = plan_jobs(export, ["fp32", "bf16"], ["fixed", "dynamic"])
    assert [(j.kind, j.scale, j.precision) for j in jobs] == [
        *[("fixed", s, p) for s in SCALES for p in ("fp32", "bf16")],
        ("dynamic", None, "fp32"),
        ("dynamic", None, "bf16"),
    ]
    dynamic = jobs[-1]
    sizes = verify_sizes(dynamic, 12)
    example = dynamic.profiles[0].opt[2:]
    assert len(sizes) >= 11 and all((h, w) != tuple(example) for _, h, w in sizes)
    assert (1, export.sizes.min, export.sizes.min) in sizes and {b for b, _, _ in sizes} == {1, 2}
    assert verify_sizes(jobs[0], 12) == [(1, 112, 112), (8, 112, 112)]


def test_precision_defaults_to_fp16_on_a_gpu_and_to_fp32_elsewhere(
    packages: dict[str, Path], runtime_onnx: Path, tmp_path: Path
) -> None:
    target = read_engine_manifest(packages["fixed"]).target | {"device": "cuda", "capability": "9.0"}
    for_gpu = rewritten(packages["fixed"], tmp_path, target=target)
    assert (
        gpu_requested(for_gpu, None)
        and not gpu_requested(for_gpu, "cpu")
        and not gpu_requested(packages["fixed"], None)
    )
    assert default_precision(runtime_onnx, "cuda") == "fp16"  # the export has fp16 models
    assert default_precision(runtime_onnx, None) == default_precision(runtime_onnx, "cpu") == "fp32"
    assert default_precision(for_gpu, None) == "fp32"  # compiled for a GPU, but only in fp32
