"""`sppnet infer` and `sppnet serve-repo`: classify images of any size through the runtime; a Triton repository."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from sppnet.engines.runtime import BACKENDS


def register(sub: argparse._SubParsersAction) -> None:
    inf = sub.add_parser("infer", help="classify images of any size, each routed to the right engine")
    inf.add_argument("images", nargs="+", metavar="IMAGE")
    inf.add_argument(
        "--engines",
        required=True,
        type=Path,
        metavar="DIR",
        help="an engine directory (sppnet build), an ONNX export (sppnet export) or a run",
    )
    inf.add_argument("--backend", choices=BACKENDS, default="auto", help="(auto: the directory's own)")
    inf.add_argument(
        "--device", default=None, metavar="cpu|cuda[:N]", help="where the models run; cuda feeds the GPU (the stream)"
    )
    inf.add_argument("--workers", type=int, default=None, help="decoding processes of the GPU-fed path")
    inf.add_argument(
        "--policy",
        choices=["full", "center-crop", "nearest", "none"],
        default="full",
        help="full: whole image, short side S; center-crop: the paper's 1 view; nearest: the closest "
        "fixed scale; none: as it is (full)",
    )
    inf.add_argument("--short-side", type=int, default=None, metavar="S", help="full: short side (the crop size)")
    inf.add_argument(
        "--outside",
        choices=["resize", "error"],
        default="resize",
        help="a size no model takes: fit it into the served range, aspect kept, and record that in the route "
        "(resize, the default), or refuse it (error)",
    )
    inf.add_argument(
        "--precision",
        choices=["fp32", "fp16", "bf16"],
        default=None,
        help="(fp16 on a GPU where the directory has it, else fp32)",
    )
    inf.add_argument("--topk", type=int, default=5)
    inf.add_argument("--json", action="store_true", help="one JSON object per image and line")
    inf.set_defaults(run=infer)

    sr = sub.add_parser("serve-repo", help="a Triton Inference Server model repository from an engine directory")
    sr.add_argument("--engines", required=True, type=Path, metavar="ENGINE_DIR")
    sr.add_argument("--out", required=True, type=Path, metavar="REPO")
    sr.add_argument("--max-queue-delay-us", type=int, default=100, help="dynamic batching delay (100)")
    sr.add_argument("--instances", type=int, default=1, help="model instances per GPU (1)")
    sr.add_argument(
        "--allow-rtx",
        action="store_true",
        help="write the layout for TensorRT-RTX engines too (Triton's TensorRT backend cannot load them)",
    )
    sr.set_defaults(run=serve_repo)


def infer(args: argparse.Namespace) -> int:
    """Exit status 0 when every image was classified, 1 when some failed, 2 when none could be."""
    from sppnet.engines.routing import Policy
    from sppnet.engines.runtime import Runtime

    policy = Policy(args.policy, args.short_side, args.outside)
    options = {"backend": args.backend, "policy": policy, "precision": args.precision, "topk": args.topk}
    with Runtime(args.engines, device=args.device, **options) as rt:
        gpu = (args.device or "").startswith("cuda")
        results = rt.stream(args.images, workers=args.workers) if gpu else rt.infer(args.images)
    for r in results:
        if args.json:
            print(json.dumps(r.to_json()))
        elif r.error is not None or r.route is None:
            print(f"{r.source}: error: {r.error}")
        else:
            best = ", ".join(f"{c} {p:.3f}" for c, p in r.topk)
            print(f"{r.source}: {best}  [{r.route.describe()}]")
    failed = sum(r.error is not None for r in results)
    return 0 if not failed else 1 if failed < len(results) else 2


def serve_repo(args: argparse.Namespace) -> None:
    from sppnet.engines.serve_repo import write_model_repository

    out = write_model_repository(
        args.engines,
        args.out,
        max_queue_delay_us=args.max_queue_delay_us,
        instance_count=args.instances,
        allow_rtx=args.allow_rtx,
    )
    print(f"wrote the Triton model repository {out} (routing: {out / 'README.txt'})")
