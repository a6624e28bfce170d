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


def load_net(case: dict[str, Any], shape: tuple[int, ...]) -> caffe.Net:
    """The case's prototxt (with its caffemodel, if any), its input `data` reshaped to `shape`."""
    if case.get("caffemodel"):
        net = caffe.Net(case["prototxt"], case["caffemodel"], caffe.TEST)
    else:
        net = caffe.Net(case["prototxt"], caffe.TEST)
    net.blobs["data"].reshape(*shape)
    net.reshape()
    return net


V1_TYPES = {"Convolution": "CONVOLUTION", "InnerProduct": "INNER_PRODUCT"}
V0_TYPES = {"Convolution": "conv", "InnerProduct": "innerproduct"}


def save_weights(job: Path, net: caffe.Net, save: dict[str, str]) -> None:
    """Write the net's weights: Caffe's own V2 file, or that file rewritten as V1 / V0 with legacy blob dims."""
    from caffe.proto import caffe_pb2

    path = Path(save["path"])
    if save["layout"] == "V2":
        net.save(str(path))
        return
    tmp = job / "v2.caffemodel"
    net.save(str(tmp))
    source = caffe_pb2.NetParameter()
    source.ParseFromString(tmp.read_bytes())
    out = caffe_pb2.NetParameter(name=source.name)
    for layer in source.layer:
        if not layer.blobs:
            continue
        entry = out.layers.add()
        entry.bottom.extend(layer.bottom)
        entry.top.extend(layer.top)
        if save["layout"] == "V1":
            entry.name = layer.name
            entry.type = getattr(caffe_pb2.V1LayerParameter, V1_TYPES[layer.type])
            blobs = entry.blobs
        else:
            entry.layer.name = layer.name
            entry.layer.type = V0_TYPES[layer.type]
            blobs = entry.layer.blobs
        for blob in layer.blobs:
            legacy = blobs.add()
            dims = [1] * (4 - len(blob.shape.dim)) + list(blob.shape.dim)
            legacy.num, legacy.channels, legacy.height, legacy.width = dims
            legacy.data.extend(blob.data)
    path.write_bytes(out.SerializeToString())


def run_case(job: Path, case: dict[str, Any]) -> None:
    """Forward one case and save its output blobs (copies, as float32)."""
    data = load(job / "arrays" / case["data"])
    net = load_net(case, data.shape) if case.get("prototxt") else build_net(job, case, data.shape)
    for layer, files in case["params"].items():
        for blob, name in zip(net.params[layer], files, strict=True):
            value = load(job / "arrays" / name)
            if blob.data.shape != value.shape:
                raise ValueError(f"{case['id']}: {layer} expects {blob.data.shape}, got {value.shape}")
            blob.data[...] = value
    if case.get("save"):
        save_weights(job, net, case["save"])
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
