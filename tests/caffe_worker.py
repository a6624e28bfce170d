"""Run a job of Caffe forward-pass cases (see caffe_oracle.py); started as `python caffe_worker.py JOB START`.

Runs the cases of JOB/job.json from index START in order. Each case's output blobs go to
JOB/results/<id>.<blob>.npy, then its id is appended to JOB/done.txt (flushed), so the parent knows which case
was running if Caffe aborts the process.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import caffe
import numpy as np
from caffe import layers as L


def build_net(job: Path, case: dict[str, Any], shape: tuple[int, ...]) -> caffe.Net:
    """The case's net: Input `data` of `shape`, then its NetSpec layers, written as a prototxt and loaded."""
    ns = caffe.NetSpec()
    ns["data"] = L.Input(shape={"dim": list(shape)})
    for layer in case["layers"]:
        bottoms = [ns[name] for name in layer["bottom"]]
        ns[layer["name"]] = getattr(L, layer["type"])(*bottoms, **layer.get("params", {}))
    path = job / f"{case['id']}.prototxt"
    path.write_text(str(ns.to_proto()))
    return caffe.Net(str(path), caffe.TEST)


def load(path: Path) -> np.ndarray:
    """An input array, never unpickled."""
    return np.load(path, allow_pickle=False)


def run_case(job: Path, case: dict[str, Any]) -> None:
    """Forward one case and save its output blobs (copies, as float32)."""
    data = load(job / "arrays" / case["data"])
    net = build_net(job, case, data.shape)
    for layer, files in case["params"].items():
        for blob, name in zip(net.params[layer], files, strict=True):
            value = load(job / "arrays" / name)
            if blob.data.shape != value.shape:
                raise ValueError(f"{case['id']}: {layer} expects {blob.data.shape}, got {value.shape}")
            blob.data[...] = value
    net.blobs["data"].data[...] = data
    net.forward()
    for blob in case["outputs"]:
        tmp = job / "results" / f"{case['id']}.{blob}.tmp.npy"
        np.save(tmp, np.array(net.blobs[blob].data, dtype=np.float32, copy=True))
        os.replace(tmp, job / "results" / f"{case['id']}.{blob}.npy")


def main(job: Path, start: int) -> None:
    """Run cases[start:], recording each finished id in done.txt."""
    caffe.set_mode_cpu()
    cases = json.loads((job / "job.json").read_text())["cases"]
    with open(job / "done.txt", "a") as done:
        for case in cases[start:]:
            sys.stderr.write(f"[caffe-worker] running {case['id']}\n")
            sys.stderr.flush()
            run_case(job, case)
            done.write(case["id"] + "\n")
            done.flush()


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]))
