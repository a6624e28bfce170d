"""The GPU-fed path on the CPU (the same code, without streams): its geometry equals `routing.prepare`'s, its
resampling equals OpenCV's, its batches equal the CPU preprocessing, and `Runtime.stream` returns what
`Runtime.infer` returns, for arrays and for files decoded in worker processes, bad images and all."""

from __future__ import annotations

import dataclasses
import itertools
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sppnet.core.errors import BackendError, OutOfMemory
from sppnet.core.images import load_bgr
from sppnet.core.preprocess import resize_to
from sppnet.engines.compare import compare
from sppnet.engines.feed import DevicePreprocess, batch_topk, decode_uint8, plan_view, resample, stage_meta
from sppnet.engines.model_set import ModelSet, load_model_set
from sppnet.engines.routing import POLICIES, Policy, RouteError, prepare, route
from sppnet.engines.runtime import Runtime

SIZES = [(112, 112), (90, 90), (97, 131), (41, 300), (64, 40), (300, 451), (39, 39), (20, 700), (900, 1800), (7, 9)]


def subsets(models: ModelSet) -> dict[str, ModelSet]:
    """The export as it is, only its 90x90 model (everything fits onto it, cropped views after the mean), and only
    its dynamic model."""
    fixed90 = tuple(f for f in models.files if f.scale == (90, 90))
    dynamic = tuple(f for f in models.files if f.kind == "dynamic")
    return {
        "all": models,
        "fixed 90": dataclasses.replace(models, files=fixed90),
        "dynamic": dataclasses.replace(models, files=dynamic),
    }


def policies() -> list[Policy]:
    return [Policy(name, side, outside) for name in POLICIES for side in (None, 77) for outside in ("resize", "error")]


def test_the_plan_of_every_size_and_policy_is_the_geometry_and_route_of_prepare(runtime_onnx: Path) -> None:
    models = load_model_set(runtime_onnx)
    rng = np.random.default_rng(0)
    sizes = SIZES + [tuple(int(v) for v in rng.integers(8, 800, 2)) for _ in range(12)]
    two_stage = 0
    for (name, subset), policy, (h, w) in itertools.product(subsets(models).items(), policies(), sizes):
        image = np.zeros((h, w, 3), np.uint8)
        try:
            view = prepare(image, policy, models.card.preprocess, subset)
            want = route(view, subset)
        except RouteError as e:
            with pytest.raises(RouteError, match=re.escape(str(e))):
                plan_view(h, w, policy, models.card.preprocess, subset)
            continue
        plan = plan_view(h, w, policy, models.card.preprocess, subset)
        assert plan.route == want and plan.size == view.pixels.shape[:2], (name, policy, h, w)
        two_stage += plan.second is not None
    assert two_stage > 10  # the cropped views fitted after the mean were exercised


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_resampling_equals_opencv_resize_then_crop(dtype: type) -> None:
    rng = np.random.default_rng(1)
    cases = [((50, 60), (50, 60)), ((143, 45), (356, 112)), ((356, 112), (224, 70)), ((224, 224), (112, 112))]
    cases += [((31, 17), (7, 5)), ((10, 300), (39, 1170)), ((97, 131), (131, 97))]
    images, rows, offset = [], [], 0
    for (h, w), (rh, rw) in cases:
        image = rng.integers(0, 256, (h, w, 3)).astype(dtype)
        out_h, out_w = min(rh, 40), min(rw, 30)
        top, left = (rh - out_h) // 3, (rw - out_w) // 2
        got = resample(torch.from_numpy(image.reshape(-1)), torch.tensor([[0, h, w, rh, rw, top, left]]), out_h, out_w)
        want = resize_to(image, rh, rw)[top : top + out_h, left : left + out_w]
        assert got.shape == (1, out_h, out_w, 3) and np.abs(got[0].numpy() - want).max() < 5e-3, ((h, w), (rh, rw))
        if (out_h, out_w) == (40, 30):  # several images of one output size, packed in one buffer
            images.append((image, want))
            rows.append([offset, h, w, rh, rw, top, left])
            offset += image.size
    flat = torch.from_numpy(np.concatenate([image.reshape(-1) for image, _ in images]))
    batch = resample(flat, torch.tensor(rows), 40, 30).numpy()
    assert max(np.abs(batch[i] - want).max() for i, (_, want) in enumerate(images)) < 5e-3


def test_a_device_batch_is_the_cpu_preprocessing_of_each_image(runtime_onnx: Path, tmp_path: Path) -> None:
    models = load_model_set(runtime_onnx)
    mean = tmp_path / "mean.npy"
    np.save(mean, np.random.default_rng(2).uniform(90, 160, (3, 40, 50)).astype(np.float32))
    for pre in (models.card.preprocess, dataclasses.replace(models.card.preprocess, mean_image=str(mean))):
        device = DevicePreprocess(pre, "cpu")
        rng = np.random.default_rng(3)
        for subset, policy in [(models, Policy("nearest")), (subsets(models)["fixed 90"], Policy("center-crop"))]:
            images = [
                rng.integers(0, 256, (int(h), int(w), 3), dtype=np.uint8) for h, w in rng.integers(60, 400, (9, 2))
            ]
            plans = [plan_view(*image.shape[:2], policy, pre, subset) for image in images]
            by_route: dict[tuple, list[int]] = {}
            for i, plan in enumerate(plans):
                by_route.setdefault(plan.route.key(), []).append(i)
            for members in by_route.values():
                offsets = np.cumsum([0] + [images[i].size for i in members[:-1]])
                flat = torch.from_numpy(np.concatenate([images[i].reshape(-1) for i in members]))
                meta = torch.tensor([stage_meta(int(o), plans[i]) for o, i in zip(offsets, members, strict=True)])
                got = device.batch(flat, meta, [plans[i] for i in members]).numpy()
                for row, i in zip(got, members, strict=True):
                    want = prepare(images[i], policy, pre, subset).pixels
                    assert np.abs(row.transpose(1, 2, 0) - want).max() / pre.scale < 5e-3  # grey levels


def stream_inputs(tmp_path: Path, photos: list[Path]) -> list[Path | np.ndarray]:
    rng = np.random.default_rng(4)
    jpeg = tmp_path / "mixed.jpg"
    cv2.imwrite(str(jpeg), rng.integers(0, 256, (150, 97, 3), dtype=np.uint8))
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(jpeg.read_bytes()[:200])
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    arrays = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in [(112, 112), (90, 90), (97, 131), (64, 40)]]
    images: list[Path | np.ndarray] = [*photos[:4], jpeg, broken, text, *arrays, np.zeros((5, 5), np.uint8)]
    return [images[i] for i in rng.permutation(len(images))]


@pytest.mark.parametrize("policy", ["none", "nearest"])
def test_the_stream_returns_what_infer_returns_in_input_order(
    runtime_onnx: Path, photos: list[Path], tmp_path: Path, policy: str
) -> None:
    images = stream_inputs(tmp_path, photos)
    with Runtime(runtime_onnx, policy=Policy(policy), topk=3) as rt:
        want = rt.infer(images)
        got = rt.stream(images, workers=2)
        assert rt._feed.stats["images"] == sum(r.error is None for r in want)
    assert [r.source for r in got] == [r.source for r in want] and [r.index for r in got] == list(range(len(images)))
    for g, w in zip(got, want, strict=True):
        assert (g.error is None) == (w.error is None), (g.source, g.error, w.error)
        if w.error is not None:
            assert g.route is None
            continue
        assert g.route == w.route
        assert compare(g.logits[None], w.logits[None], name=g.source, precision="fp32", size=(0, 0)).ok
        assert [c for c, _ in g.topk] == [c for c, _ in w.topk]
    errors = {Path(r.source).name: r.error for r in got if r.error}
    assert set(errors) == {"broken.jpg", "notes.png", "<array>"}
    assert "truncated or corrupt" in errors["broken.jpg"] and "BGR uint8 of shape (H, W, 3)" in errors["<array>"]


def test_decoded_files_are_the_decoder_s_pixels_in_eight_bits(photos: list[Path], tmp_path: Path) -> None:
    for path in photos[:3]:
        assert np.array_equal(decode_uint8(str(path)), load_bgr(path).astype(np.uint8))
    deep = tmp_path / "deep.png"
    cv2.imwrite(str(deep), np.random.default_rng(5).integers(0, 65536, (20, 30), dtype=np.uint16))
    assert np.abs(decode_uint8(str(deep)).astype(np.float32) - load_bgr(deep)).max() <= 0.5
    assert "file not found" in decode_uint8(str(tmp_path / "missing.jpg"))


class Flaky:
    """A model call that runs out of memory above `limit` images and fails outright on a 97x131 batch."""

    def __init__(self, classes: int, limit: int) -> None:
        self.classes, self.limit, self.batches = classes, limit, []

    def __call__(self, x: torch.Tensor, profile: int) -> torch.Tensor:
        if len(x) > self.limit:
            raise OutOfMemory("out of memory")
        if tuple(x.shape[2:]) == (97, 131):
            raise BackendError("this batch cannot run")
        self.batches.append(len(x))
        return x.mean(dim=(2, 3)).repeat(1, self.classes)[:, : self.classes]


def test_out_of_memory_halves_the_batch_and_a_failed_batch_fails_only_its_images(runtime_onnx: Path) -> None:
    rng = np.random.default_rng(6)
    sizes = [(112, 112)] * 7 + [(97, 131)] * 2 + [(90, 90)] * 3
    images = [rng.integers(0, 256, (*size, 3), dtype=np.uint8) for size in sizes]
    with Runtime(runtime_onnx, policy=Policy("none")) as rt:
        rt.stream(images[:1])
        flaky = Flaky(rt.models.card.num_classes, limit=2)
        rt._feed.calls = {name: (flaky, lambda batch: None) for name in rt._feed.calls}
        results = rt.stream(images)
    assert max(flaky.batches) <= 2 and sum(flaky.batches) == 10
    assert [r.error for r in results if r.error] == ["this batch cannot run"] * 2
    assert all(r.error is None for r, size in zip(results, sizes, strict=True) if size != (97, 131))


def test_the_batched_top_k_is_the_runtime_s_including_ties() -> None:
    classes = [f"c{i}" for i in range(50)]
    logits = np.random.default_rng(7).normal(size=(20, 50)).astype(np.float32)
    logits[0] = 0.0
    logits[1, [3, 9, 40]] = 5.0
    for k in (1, 3, 50):

        def one(row: np.ndarray, k: int = k) -> tuple[tuple[str, float], ...]:
            z = row.astype(np.float64) - row.max()
            p = np.exp(z) / np.exp(z).sum()
            return tuple((classes[i], float(p[i])) for i in np.argsort(-p, kind="stable")[:k])

        assert batch_topk(logits, k, classes) == [one(row) for row in logits]
