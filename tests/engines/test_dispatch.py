"""The dispatcher's error model: an `SppnetError` raised by a runner (a failure the user can fix) fails only the
images of its batch; any other exception is a bug, logged on "sppnet.engines" with its traceback and raised from
`Runtime.infer`; the stream batcher hands a bug to the futures of its batch and keeps serving the others.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from sppnet.core.errors import BackendError, DeviceUnavailable, SppnetError
from sppnet.engines.backends.base import Runner, TensorMeta
from sppnet.engines.dispatch import Executor, Item, StreamBatcher
from sppnet.engines.routing import Policy, Route
from sppnet.engines.runtime import Runtime

FIXED_90 = "zf5_cpu_90x90_fp32.onnx"


class Scripted(Runner):
    """A runner that raises `error` when set, and otherwise returns logits [mean, 2 * mean] of each input."""

    name = "scripted"

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__()
        self.error = error
        self.batches: list[int] = []

    def _activate_impl(self) -> None: ...

    def _infer_impl(self, feed: dict[str, np.ndarray], profile: int) -> dict[str, np.ndarray]:
        (x,) = feed.values()
        self.batches.append(len(x))
        if self.error is not None:
            raise self.error
        return {"logits": mean_logits(x)}

    def _inputs_impl(self) -> list[TensorMeta]:
        return [TensorMeta("image", np.dtype(np.float32), (None, 3, None, None))]

    def _outputs_impl(self) -> list[TensorMeta]:
        return [TensorMeta("logits", np.dtype(np.float32), (None, 2))]

    def _deactivate_impl(self) -> None: ...


def mean_logits(x: np.ndarray) -> np.ndarray:
    means = x.reshape(len(x), -1).mean(1, keepdims=True)
    return (means * np.array([1.0, 2.0])).astype(np.float32)


def images(sizes: list[int], seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (s, s, 3), dtype=np.uint8) for s in sizes]


@pytest.mark.parametrize(
    "error",
    [BackendError("engine 90 failed: rebuild it"), DeviceUnavailable("no usable CUDA GPU: serve the ONNX export")],
)
def test_a_user_fixable_runner_error_fails_only_its_batchs_images(runtime_onnx: Path, error: SppnetError) -> None:
    batch = images([112, 90, 112, 90, 100])
    with Runtime(runtime_onnx, policy=Policy("none")) as rt:
        want = rt.infer(batch)
        broken = Scripted(error).activate()
        rt.runners[FIXED_90] = rt.executor.runners[FIXED_90] = broken
        got = rt.infer(batch)
    assert broken.batches == [2]  # the two 90x90 images, one batch
    assert [r.error for r in got] == [None, str(error), None, str(error), None]
    assert [r.route for r in got] == [r.route for r in want]  # a failed image still says where it went
    for before, after in zip(want, got, strict=True):
        if after.error is None:
            assert np.array_equal(before.logits, after.logits)


def test_any_other_exception_is_a_bug_logged_with_its_traceback_and_raised_from_infer(
    runtime_onnx: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bug = ZeroDivisionError("an index went wrong")
    with Runtime(runtime_onnx, policy=Policy("none")) as rt:
        rt.runners[FIXED_90] = rt.executor.runners[FIXED_90] = Scripted(bug).activate()
        with caplog.at_level(logging.ERROR, logger="sppnet.engines"), pytest.raises(ZeroDivisionError) as raised:
            rt.infer(images([112, 90, 90]))
    assert raised.value is bug
    (record,) = [r for r in caplog.records if r.name == "sppnet.engines"]
    assert record.levelno == logging.ERROR and record.exc_info is not None and record.exc_info[1] is bug
    assert f"batch of 2 on {FIXED_90}" in record.getMessage()
    assert "Traceback (most recent call last)" in caplog.text and "_infer_impl" in caplog.text


def test_the_stream_batcher_hands_a_bug_to_its_batchs_futures_and_keeps_serving(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bug = KeyError("logits")
    runners = {"good": Scripted().activate(), "buggy": Scripted(bug).activate()}
    executor = Executor(runners, lambda route: 4, "image", "logits")
    views = [v.astype(np.float32) for v in images([20, 20, 20, 20, 20, 20], seed=1)]

    def item(model: str, view: np.ndarray) -> Item:
        return Item(view, Route(model, "dynamic", 0, 20, 20))

    batcher = StreamBatcher(executor, max_wait_ms=20)
    try:
        with caplog.at_level(logging.ERROR, logger="sppnet.engines"):
            models = ["good", "buggy", "good", "buggy"]
            first = [batcher.submit(item(m, v)) for m, v in zip(models, views[:4], strict=True)]
            for future in (first[1], first[3]):
                with pytest.raises(KeyError) as raised:
                    future.result(timeout=30)
                assert raised.value is bug
            for future, view in ((first[0], views[0]), (first[2], views[2])):
                np.testing.assert_allclose(future.result(timeout=30), mean_logits(view[None])[0], rtol=1e-6)
            later = [batcher.submit(item("good", v)) for v in views[4:]]  # the worker survived the bug
            for future, view in zip(later, views[4:], strict=True):
                np.testing.assert_allclose(future.result(timeout=30), mean_logits(view[None])[0], rtol=1e-6)
    finally:
        batcher.close()
    assert any(r.exc_info and r.exc_info[1] is bug for r in caplog.records if r.name == "sppnet.engines")
    assert runners["buggy"].batches == [2]


def test_a_bug_in_a_streamed_batch_reaches_the_callers_future(runtime_onnx: Path) -> None:
    bug = ZeroDivisionError("an index went wrong")
    with Runtime(runtime_onnx, policy=Policy("none"), max_wait_ms=20) as rt:
        rt.runners[FIXED_90] = rt.executor.runners[FIXED_90] = Scripted(bug).activate()
        good, buggy = (rt.submit(image, index=i) for i, image in enumerate(images([112, 90])))
        assert good.result(timeout=60).error is None
        with pytest.raises(ZeroDivisionError):  # as from `infer`: a bug is not one image's error line
            buggy.result(timeout=60)
        assert rt.submit(images([112])[0]).result(timeout=60).error is None  # and the stream goes on
