"""Find or build the CPU-only BVLC Caffe oracle, and run forward-pass cases on it in a subprocess.

Caffe is never imported here: `caffe_worker.py` runs under the oracle's PYTHONPATH with this interpreter, so
Caffe's protobuf and its SIGABRTs ("Check failed: pad_h_ < kernel_h_") stay out of the pytest process.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("caffe_worker.py")
ABORTED: Literal["aborted"] = "aborted"
CASE_ID = re.compile(r"^[A-Za-z0-9_.+-]+$")
BLOB_NAME = re.compile(r"^[A-Za-z0-9_]+$")

Outputs = dict[str, np.ndarray]
Results = dict[str, Outputs | Literal["aborted"]]


class OracleError(RuntimeError):
    """The worker failed in a way that is not a Caffe CHECK abort on a case."""


def oracle_prefix() -> Path:
    """Install prefix: $SPPNET_CAFFE_ORACLE, else $XDG_CACHE_HOME (or ~/.cache)/sppnet/caffe-oracle."""
    if os.environ.get("SPPNET_CAFFE_ORACLE"):
        return Path(os.environ["SPPNET_CAFFE_ORACLE"]).expanduser()
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser()
    return cache / "sppnet" / "caffe-oracle"


def build_script() -> Path:
    """build.sh: $SPPNET_CAFFE_ORACLE_SRC, else <repo root>/../shared/tools/caffe-oracle/build.sh."""
    if os.environ.get("SPPNET_CAFFE_ORACLE_SRC"):
        return Path(os.environ["SPPNET_CAFFE_ORACLE_SRC"]).expanduser()
    return REPO_ROOT.parent / "shared" / "tools" / "caffe-oracle" / "build.sh"


def oracle_env(prefix: Path) -> dict[str, str]:
    """Environment for a subprocess importing the oracle's pycaffe: only its python/, pydeps/ on the path."""
    path = f"{prefix / 'python'}{os.pathsep}{prefix / 'pydeps'}"
    env = dict(os.environ, PYTHONPATH=path, GLOG_minloglevel="2")
    env.pop("PYTHONHOME", None)
    return env


def is_built(prefix: Path) -> bool:
    """Whether `import caffe` succeeds in a subprocess with the oracle's PYTHONPATH."""
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "import caffe"],
            env=oracle_env(prefix),
            capture_output=True,
            timeout=120,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return probe.returncode == 0


def build(prefix: Path, script: Path, tail_lines: int = 60) -> None:
    """Run build.sh PREFIX with PYTHON=this interpreter, echoing its output; pytest.fail with its tail."""
    tail: deque[str] = deque(maxlen=tail_lines)
    sys.stderr.write(f"[caffe-oracle] building into {prefix} with {script} (takes about 3 minutes)\n")
    env = dict(os.environ, PYTHON=sys.executable)
    with subprocess.Popen(
        ["bash", str(script), str(prefix)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
    ) as proc:
        assert proc.stdout is not None
        for line in proc.stdout:
            tail.append(line.rstrip("\n"))
            sys.stderr.write(line)
        rc = proc.wait()
    if rc != 0:
        pytest.fail(
            f"building the Caffe oracle failed (rc {rc}): bash {script} {prefix}\n" + "\n".join(tail), pytrace=False
        )


def find_or_build() -> CaffeOracle:
    """The oracle at `oracle_prefix()`, built if needed; skip (fail under CI) when build.sh is missing."""
    prefix = oracle_prefix()
    if is_built(prefix):
        return CaffeOracle(prefix)
    script = build_script()
    if not script.is_file():
        reason = (
            f"Caffe oracle not importable from {prefix} and no build script at {script}: "
            "set SPPNET_CAFFE_ORACLE_SRC to caffe-oracle/build.sh"
        )
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    build(prefix, script)
    if not is_built(prefix):
        pytest.fail(f"build.sh finished but `import caffe` still fails with PYTHONPATH from {prefix}", pytrace=False)
    return CaffeOracle(prefix)


@dataclass
class Case:
    """One Caffe forward pass: an Input blob `data` = `data`, then `layers`, returning `outputs` blobs.

    `layers` are NetSpec calls: {"name", "type", "bottom": [names], "params": {...}} (enums as names, e.g.
    "MAX"); `params` maps a layer name to its parameter blobs (weights, bias) in Caffe's layout.

    Or a net from files: `prototxt` (any layout Caffe upgrades) with weights from `caffemodel`, its input blob
    `data` reshaped to `data`'s shape. `save` = {"path", "layout": "V2" | "V1" | "V0"} writes the net's weights
    after `params` are set: V2 with Caffe's own Net.save, V1 / V0 rewritten with Caffe's caffe_pb2 as
    `layers` entries (V0: nested in `layer`) whose blobs carry the legacy num/channels/height/width.
    """

    id: str
    data: np.ndarray
    layers: list[dict[str, Any]]
    outputs: list[str]
    params: Mapping[str, Sequence[np.ndarray]] = field(default_factory=dict)
    prototxt: str | None = None
    caffemodel: str | None = None
    save: dict[str, str] | None = None


@dataclass
class CaffeOracle:
    """A built oracle: runs cases in one worker subprocess, restarting it after each Caffe abort."""

    Case: ClassVar[type[Case]] = Case
    prefix: Path
    abort_logs: dict[str, str] = field(default_factory=dict)
    launches: int = 0

    def run(self, cases: Sequence[Case], timeout: float = 600.0) -> Results:
        """Id -> {blob: array} per case, or "aborted" where Caffe died (stderr tail in `abort_logs`)."""
        ids = [case.id for case in cases]
        if len(set(ids)) != len(ids):
            raise ValueError("case ids must be unique")
        with tempfile.TemporaryDirectory(prefix="caffe_oracle_job_") as tmp:
            job = Path(tmp)
            _write_job(job, cases)
            results: Results = {}
            position = 0
            while position < len(cases):
                position = self._launch(job, cases, position, results, timeout)
            return results

    def _launch(self, job: Path, cases: Sequence[Case], start: int, results: Results, timeout: float) -> int:
        """Run the worker from case `start`; collect finished cases; return the next position to run from."""
        self.launches += 1
        try:
            command = [sys.executable, str(WORKER), str(job), str(start)]
            proc = subprocess.run(
                command,
                env=oracle_env(self.prefix),
                capture_output=True,
                text=True,
                errors="replace",
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            where = cases[start].id
            raise OracleError(f"Caffe worker timed out after {timeout} s, on cases from {where}") from exc
        done_file = job / "done.txt"
        done = set(done_file.read_text().split()) if done_file.exists() else set()
        position = start
        for case in cases[start:]:
            if case.id not in done:
                break
            results[case.id] = {
                blob: np.load(job / "results" / f"{case.id}.{blob}.npy", allow_pickle=False) for blob in case.outputs
            }
            position += 1
        if proc.returncode == 0:
            if position != len(cases):
                raise OracleError(f"Caffe worker exited cleanly but stopped before case {cases[position].id}")
            return position
        tail = "\n".join(proc.stderr.splitlines()[-20:])
        if position == len(cases) or "Check failed" not in proc.stderr:
            where = cases[position].id if position < len(cases) else "after the last case"
            rc = proc.returncode
            raise OracleError(f"Caffe worker died (rc {rc}) at {where}, not on a CHECK abort:\n{tail}")
        results[cases[position].id] = ABORTED
        self.abort_logs[cases[position].id] = tail
        return position + 1


def _write_job(job: Path, cases: Sequence[Case]) -> None:
    """job.json plus one .npy per input and parameter blob, all under `job`."""
    arrays = job / "arrays"
    arrays.mkdir()
    (job / "results").mkdir()
    spec, saved = [], {}  # blobs shared between cases (the same array object) are written once
    for case in cases:
        if not CASE_ID.match(case.id) or not all(BLOB_NAME.match(blob) for blob in case.outputs):
            raise ValueError(f"case id {case.id!r} and output blob names must be plain file-name characters")
        np.save(arrays / f"{case.id}.data.npy", np.ascontiguousarray(case.data, dtype=np.float32))
        params = {}
        for layer, blobs in case.params.items():
            params[layer] = []
            for i, blob in enumerate(blobs):
                if id(blob) not in saved:
                    saved[id(blob)] = f"{case.id}.{layer}.{i}.npy"
                    np.save(arrays / saved[id(blob)], np.ascontiguousarray(blob, dtype=np.float32))
                params[layer].append(saved[id(blob)])
        spec.append(
            {
                "id": case.id,
                "data": f"{case.id}.data.npy",
                "layers": case.layers,
                "outputs": case.outputs,
                "params": params,
                "prototxt": case.prototxt,
                "caffemodel": case.caffemodel,
                "save": case.save,
            }
        )
    (job / "job.json").write_text(json.dumps({"cases": spec}))
