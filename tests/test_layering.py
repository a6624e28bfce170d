"""The package's layers import only downward (core <- reproduce <- export <- engines <- pipeline <- cli), and the
runtime imports nothing from training or from the engine builder."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ("core", "reproduce", "export", "engines", "pipeline", "cli")
# What the runtime may import from below it: the core, and from export only the torch-free TensorRT module choice.
RUNTIME_MAY_IMPORT = ("sppnet.core", "sppnet.export.trt_module")
# Imported lazily by benchmarks and checks that compare against PyTorch, never by the serving path.
RUNTIME_TOOLS = {"bench_runtime.py", "gpu_check.py", "parity.py"}


def imports_of(path: Path, package: str | None = None) -> list[tuple[int, str]]:
    """Every `sppnet.*` module a file imports (absolute or relative), with its line."""
    package = package or ".".join(("sppnet", *path.relative_to(ROOT).parent.parts))
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names if alias.name.startswith("sppnet")]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.startswith("sppnet"):
                found.append((node.lineno, module))
    return found


def sources(layer: str) -> list[Path]:
    return sorted((ROOT / layer).rglob("*.py"))


@pytest.mark.parametrize("layer", LAYERS)
def test_each_layer_imports_only_itself_and_the_layers_below(layer: str) -> None:
    allowed = LAYERS[: LAYERS.index(layer) + 1]
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources(layer)
        for line, module in imports_of(path)
        if module.split(".")[1] not in allowed
    ]
    assert not wrong, "\n".join(wrong)


def test_the_runtime_imports_nothing_from_training_or_the_engine_builder() -> None:
    wrong = [
        f"{path.relative_to(ROOT)}:{line} imports {module}"
        for path in sources("engines")
        if path.name not in RUNTIME_TOOLS
        for line, module in imports_of(path)
        if not module.startswith(("sppnet.engines", *RUNTIME_MAY_IMPORT))
    ]
    assert not wrong, "\n".join(wrong)


def test_importing_the_runtime_loads_no_training_builder_or_torch_module() -> None:
    code = (
        "import sys, sppnet.engines.runtime, sppnet.engines.backends.onnxrt, sppnet.engines.backends.trt; "
        "bad = sorted(m for m in sys.modules if m.startswith(('sppnet.reproduce', 'sppnet.export.build', "
        "'sppnet.export.trt_builder', 'sppnet.export.onnx', 'torch')) and sys.modules[m] is not None); "
        "print(bad); assert not bad"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_import_scan_sees_absolute_relative_and_nested_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text(
        "import os\nfrom sppnet.engines.runtime import Runtime\nfrom ..export import build\n"
        "def f():\n    import sppnet.cli\n"
    )
    found = [module for _, module in imports_of(probe, "sppnet.core")]
    assert found == ["sppnet.engines.runtime", "sppnet.export", "sppnet.cli"]
