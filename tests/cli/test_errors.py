"""The one error model at the command line: every error a user can cause or fix is one line naming the fix, exit
status 2 (1 for `infer` when only some images failed); a bug keeps its traceback; Ctrl-C says what to do next."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from sppnet.cli import main
from sppnet.core.errors import SppnetError

from .test_cli import run


def sppnet(*argv: str) -> subprocess.CompletedProcess[str]:
    """The installed command in a fresh process, as a user runs it."""
    return subprocess.run([sys.executable, "-m", "sppnet.cli", *argv], capture_output=True, text=True, check=False)


@pytest.fixture(scope="module")
def engine_dir(trained_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained run exported at 112 (fp16) and built with TensorRT-RTX, which needs no GPU to build."""
    root = tmp_path_factory.mktemp("engines")
    onnx, engines = root / "onnx", root / "engines"
    assert main(["export", "--checkpoint", str(trained_run), "--scales", "112", "--no-dynamic",
                 "--precision", "fp16", "--out", str(onnx)]) == 0  # fmt: skip
    assert main(["build", "--onnx", str(onnx), "--out", str(engines)]) == 0
    return engines


def test_infer_on_engines_without_a_gpu_is_one_line_naming_the_fix(engine_dir: Path) -> None:
    import skimage.data

    photo = Path(skimage.data.__file__).parent / "coffee.png"
    done = sppnet("infer", str(photo), "--engines", str(engine_dir), "--precision", "fp16")
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert done.stderr.startswith("sppnet: error: ") and "GPU" in done.stderr and "ONNX" in done.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["infer", "x.png", "--engines", "{tmp}"], "is not an engine directory"),
        (["infer", "x.png", "--engines", "{engines}", "--precision", "fp32"], "has no fp32 models"),
        (["infer", "x.png", "--engines", "{engines}", "--precision", "fp16", "--backend", "onnxruntime"], "tensorrt"),
        (["serve-repo", "--engines", "{engines}", "--out", "{tmp}/repo"], "--allow-rtx"),
        (["evaluate", "{tmp}", "--data", "{tmp}"], "model.json"),
        (["detect", "test", "--detector", "{tmp}", "--data", "{tmp}"], "detector"),
        (["data", "make", "--out", "{tmp}/d", "--n", "1"], "n"),
    ],
)
def test_user_errors_are_one_line_exit_2_without_traceback(
    capsys: pytest.CaptureFixture[str], engine_dir: Path, tmp_path: Path, argv: list[str], message: str
) -> None:
    code, _, err = run(capsys, *[a.format(tmp=tmp_path, engines=engine_dir) for a in argv])
    assert code == 2 and message in err and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1 and err.startswith("sppnet: error: ")


def test_infer_exits_1_when_only_some_images_fail_and_2_when_all_do(
    capsys: pytest.CaptureFixture[str], trained_run: Path, tmp_path: Path
) -> None:
    import skimage.data

    photo = str(Path(skimage.data.__file__).parent / "coffee.png")
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    code, out, _ = run(capsys, "infer", photo, str(broken), "--engines", str(trained_run))
    assert code == 1 and "broken.png: error:" in out
    code, out, _ = run(capsys, "infer", str(broken), "--engines", str(trained_run))
    assert code == 2 and "broken.png: error:" in out


def test_a_bug_keeps_its_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from sppnet.cli import describe

    def broken(args: argparse.Namespace) -> None:
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(describe, "describe", broken)
    with pytest.raises(KeyError, match="a bug"):
        main(["describe", "zf5"])
    assert not issubclass(KeyError, SppnetError)


@pytest.mark.parametrize(
    ("argv", "advice"),
    [
        (["train", "--model", "zf5_cpu", "--data", "d", "--out", "r"], "--resume"),
        (["reproduce"], "finished runs are reused"),
        (["export", "--network", "zf5_cpu", "--out", "x"], "run it again"),
        (["describe", "zf5"], "nothing was left half-written"),
    ],
)
def test_ctrl_c_says_what_to_do_for_each_command(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, argv: list[str], advice: str
) -> None:
    import sppnet.cli as cli

    parser = cli.build_parser()
    args = parser.parse_args(argv)

    def interrupted(_: argparse.Namespace) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(args, "run", interrupted)
    monkeypatch.setattr(cli, "build_parser", lambda: _Fixed(parser, args))
    code, _, err = run(capsys, *argv)
    assert code == 130 and advice in err and "Traceback" not in err


class _Fixed:
    """A parser that hands back the given namespace (whose handler raises Ctrl-C)."""

    def __init__(self, parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
        self.parser, self.args = parser, args

    def parse_args(self, argv: list[str] | None = None) -> argparse.Namespace:
        return self.args
