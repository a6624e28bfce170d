"""The `sppnet` command: one entry point, a subcommand per job; errors are one line, never a traceback."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from sppnet.core.bins import RULES
from sppnet.core.networks import NETWORKS


def parse_size(text: str) -> tuple[int, int]:
    """'224' -> (224, 224); '180x240' -> (180, 240) as (height, width)."""
    parts = text.lower().split("x")
    try:
        sizes = [int(p) for p in parts]
    except ValueError:
        sizes = []
    if len(sizes) not in (1, 2) or min(sizes) < 1:
        raise argparse.ArgumentTypeError(f"size {text!r} is not H or HxW with positive integers (e.g. 224 or 180x240)")
    return (sizes[0], sizes[-1])


def _int_list(text: str, what: str, example: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(","))
    except ValueError:
        values = ()
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{what} {text!r} are not comma-separated integers >= 1 (e.g. {example})")
    return values


def parse_levels(text: str) -> tuple[int, ...]:
    """'6,3,2,1' -> (6, 3, 2, 1)."""
    return _int_list(text, "levels", "6,3,2,1")


def parse_sizes(text: str) -> tuple[int, ...]:
    """'224,180' -> (224, 180)."""
    return _int_list(text, "sizes", "224,180")


def _describe(args: argparse.Namespace) -> None:
    from sppnet.core.describe import describe, format_table

    height, width = args.size
    rows = describe(
        args.network, height, width, spp=not args.no_spp, num_classes=args.classes, levels=args.levels, rule=args.rule
    )
    if args.json:
        print(json.dumps([{"layer": r.name, "type": r.kind, "output": r.output, "params": r.params} for r in rows]))
    else:
        print(format_table(args.network, height, width, rows))


def _bench_spp(args: argparse.Namespace) -> None:
    from sppnet.reproduce.bench_spp import bench_spp, format_rows

    rows = bench_spp(args.sizes, args.batch, args.channels, args.levels, args.rule, args.repeats)
    if args.json:
        print(json.dumps([r.to_json() for r in rows]))
    else:
        print(format_rows(rows, args.batch, args.channels, args.levels))


def _data_make(args: argparse.Namespace) -> None:
    from sppnet.reproduce.builtin_data import make_classification_dataset

    if args.task == "detection":
        from sppnet.reproduce.detection.builtin_detection import make_detection_dataset

        made = make_detection_dataset(
            Path(args.out), source=args.source, n=args.n, seed=args.seed, fashion_mnist_dir=args.fashion_mnist_dir
        )
        print(f"wrote {args.out}: VOC layout, {made['n']} images, classes {', '.join(made['classes'])}")
        return
    manifest = make_classification_dataset(
        Path(args.out), source=args.source, n=args.n, seed=args.seed, fashion_mnist_dir=args.fashion_mnist_dir
    )
    counts = {split: sum(per_class.values()) for split, per_class in manifest["counts"].items()}
    print(f"wrote {args.out}: {counts} images from {args.source}, seed {args.seed}")


def _train(args: argparse.Namespace) -> None:
    from sppnet.core.networks import get_network
    from sppnet.reproduce.solver import SolverConfig
    from sppnet.reproduce.train import TrainConfig, train

    solver = SolverConfig(base_lr=args.lr, milestones=tuple(args.milestones or ()))
    config = TrainConfig(
        model=args.model,
        spp=not args.no_spp,
        levels=args.levels,
        rule=args.rule,
        sizes=args.sizes,
        size_schedule=args.size_schedule,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=args.seed,
        dropout=args.dropout,
        init_std=args.init_std,
        solver=solver,
        preprocess=get_network(args.model).default_preprocess(args.sizes, args.short_side),
        on_bad=args.on_bad,
    )
    train(config, args.data, args.out, resume=args.resume, progress=sys.stderr.isatty())


def _evaluate(args: argparse.Namespace) -> None:
    from sppnet.core.runs import load_model, load_preprocess
    from sppnet.reproduce.datasets import builtin_split, load_images
    from sppnet.reproduce.evaluate import evaluate

    model, pre = load_model(args.run_dir), load_preprocess(args.run_dir)
    images, kept, bad = load_images(builtin_split(args.data, args.split), on_bad="skip")
    for item in bad:
        print(f"skipped {item.path}: {item.reason}", file=sys.stderr)
    labels = [sample.label for sample in kept.samples]
    result = evaluate(model, images, labels, mode=args.mode, pre=pre, size=args.size)
    if args.json:
        print(json.dumps(result.to_json()))
    else:
        print(
            f"{args.mode} at {result.size or 'scales ' + ','.join(map(str, result.scales))}: "
            f"top-1 error {100 * result.top1_err:.2f}%, "
            f"top-5 error {100 * result.top5_err:.2f}% on {result.n} images"
        )


def _reproduce(args: argparse.Namespace) -> None:
    from sppnet.pipeline.job import ReproduceConfig, reproduce

    changes = {
        k: v
        for k, v in {"source": args.source, "seeds": args.seeds, "epochs": args.epochs, "images": args.images}.items()
        if v is not None
    }
    job = ReproduceConfig.quick_run(**changes) if args.quick else ReproduceConfig(**changes)
    results = reproduce(job, args.out)
    _deploy(results, Path(args.out), parity_sizes=10 if args.quick else 50)
    if args.with_detection:
        from sppnet.pipeline.deploy import add_to_report
        from sppnet.pipeline.detect import detection_markdown, detection_stage

        run = next(r["run_dir"] for r in results["runs"] if r["variant"] == "spp_multi")
        sizes = {"images": 30, "max_proposals": 100} if args.quick else {}
        detected = detection_stage(args.out, run, source=job.source, **sizes)
        add_to_report(Path(args.out) / "report.md", detection_markdown(detected))
        print(f"report: {Path(args.out) / 'report.md'} (with detection)")


def _deploy(results: dict, out: Path, parity_sizes: int) -> None:
    """The main job after training: export the first multi-size SPP run, check it, build its engines, serve
    held-out images of varied sizes through the runtime."""
    from sppnet.pipeline.deploy import add_to_report, deploy_markdown, deploy_run
    from sppnet.pipeline.serve import held_out_images, serve_check, serve_markdown

    run = next(r["run_dir"] for r in results["runs"] if r["variant"] == "spp_multi")
    deployed = deploy_run(run, out, parity_sizes=parity_sizes)
    add_to_report(out / "report.md", deploy_markdown(deployed))
    images = held_out_images(results["settings"]["data"]["dir"], count=60 if parity_sizes < 50 else 300)
    served = serve_check(deployed["onnx_dir"], run, images)
    add_to_report(out / "report.md", serve_markdown(served))
    print(f"report: {out / 'report.md'} (with export, engines and runtime)")


def _bench_train(args: argparse.Namespace) -> None:
    from sppnet.core.networks import get_network
    from sppnet.reproduce.bench_train import bench_train, format_rows
    from sppnet.reproduce.train import TrainConfig, load_data

    config = TrainConfig(
        model=args.model,
        sizes=args.sizes,
        batch_size=args.batch_size,
        preprocess=get_network(args.model).default_preprocess(args.sizes),
    )
    rows = bench_train(config, load_data(args.data, config), args.sizes, args.batches)
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_rows(rows, args.model))


def parse_scales(text: str) -> tuple[tuple[int, int], ...]:
    """'224,180x240' -> ((224, 224), (180, 240))."""
    return tuple(parse_size(part) for part in text.split(","))


def parse_precisions(text: str) -> tuple[str, ...]:
    """'fp32,fp16' -> ('fp32', 'fp16')."""
    values = tuple(p.strip() for p in text.split(","))
    if not values or any(v not in ("fp32", "fp16") for v in values):
        raise argparse.ArgumentTypeError(f"precisions {text!r} are not a comma-separated list of fp32 and fp16")
    return values


def _export_source(args: argparse.Namespace) -> object:
    from sppnet.export.onnx_export import source_from_run, source_untrained

    if args.checkpoint is not None:
        return source_from_run(args.checkpoint, args.network)
    if args.network is None:
        raise ValueError("say what to export: --checkpoint RUN (a trained run) or --network NAME (untrained weights)")
    return source_untrained(args.network, num_classes=args.classes, seed=args.seed)


def _export_config(args: argparse.Namespace) -> object:
    from sppnet.export.onnx_export import ExportConfig

    return ExportConfig(
        scales=args.scales or (),
        dynamic=args.dynamic,
        precisions=args.precision,
        max_batch=args.max_batch,
        opt_batch=args.opt_batch,
        max_size=args.max_size,
    )


def _export(args: argparse.Namespace) -> None:
    from sppnet.export.onnx_export import export_onnx

    path = export_onnx(_export_source(args), args.out, _export_config(args), progress=print)
    print(f"wrote {path}")


def _parity(args: argparse.Namespace) -> None:
    from sppnet.engines.parity import check_export, format_summary, summarise
    from sppnet.export.onnx_export import source_of_export

    model = source_of_export(args.onnx, args.checkpoint).model
    rows = check_export(model, args.onnx, dynamic_count=args.sizes, batch=args.batch, seed=args.seed)
    summary = summarise(rows)
    print(json.dumps(summary) if args.json else format_summary(summary))
    if not all(s["ok"] for s in summary):
        raise ValueError("ONNX Runtime differs from PyTorch beyond the stated tolerance (rows marked NO above)")


def _build(args: argparse.Namespace) -> None:
    from sppnet.export.build import build_engines

    path = build_engines(
        args.onnx,
        args.out,
        precisions=args.precision,
        kinds=args.kind,
        workspace_mb=args.workspace_mb,
        compute_capabilities=args.compute_capability,
        builder=args.builder,
        progress=print,
    )
    print(f"wrote {path}")


def _bench_export(args: argparse.Namespace) -> None:
    from sppnet.export.bench_export import bench_export, format_rows
    from sppnet.export.trt_builder import BuildError, load_backend

    try:
        builder = load_backend().describe()
    except BuildError as e:
        if not args.no_build:
            raise
        builder = f"none ({e})"
    rows = bench_export(args.networks, args.out, config=_export_config(args), build=not args.no_build, keep=args.keep)
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_rows(rows, builder))


def _infer(args: argparse.Namespace) -> int:
    from sppnet.engines.routing import Policy
    from sppnet.engines.runtime import Runtime

    policy = Policy(args.policy, args.short_side, args.outside)
    with Runtime(args.engines, backend=args.backend, policy=policy, precision=args.precision, topk=args.topk) as rt:
        results = rt.infer(args.images)
    for r in results:
        if args.json:
            print(json.dumps(r.to_json()))
        elif r.error is not None:
            print(f"{r.source}: error: {r.error}")
        else:
            assert r.route is not None
            best = ", ".join(f"{c} {p:.3f}" for c, p in r.topk)
            route = f"{r.route.model} profile {r.route.profile} at {r.route.height}x{r.route.width}"
            print(f"{r.source}: {best}  [{route}]")
    return 1 if any(r.error is not None for r in results) else 0


def _bench_runtime(args: argparse.Namespace) -> None:
    from sppnet.engines.bench_runtime import bench_runtime, format_bench

    result = bench_runtime(
        args.engines,
        count=args.images,
        repeats=args.repeats,
        precision=args.precision,
        backend=args.backend,
        max_size=args.max_size,
        torch_reference=not args.no_torch,
    )
    print(json.dumps(result.to_json()) if args.json else format_bench(result))


def _serve_repo(args: argparse.Namespace) -> None:
    from sppnet.engines.serve_repo import write_model_repository

    out = write_model_repository(
        args.engines,
        args.out,
        max_queue_delay_us=args.max_queue_delay_us,
        instance_count=args.instances,
        allow_rtx=args.allow_rtx,
    )
    print(f"wrote the Triton model repository {out} (routing: {out / 'README.txt'})")


def _detection_classes(data: Path) -> list[str]:
    manifest = data / "manifest.json"
    if manifest.is_file():
        return list(json.loads(manifest.read_text())["classes"])
    from sppnet.reproduce.datasets import VOC_CLASSES

    return list(VOC_CLASSES)


def _detect_config(args: argparse.Namespace, input_size: int) -> object:
    from sppnet.reproduce.detection.pipeline import DetectConfig
    from sppnet.reproduce.detection.proposals import ProposalSettings

    changes = {
        "finetune_epochs": args.epochs,
        "finetune_lr": args.lr,
        "proposals": ProposalSettings(max_proposals=args.max_proposals),
    }
    if args.paper_scales:
        from dataclasses import replace

        return replace(DetectConfig(), **changes)
    return DetectConfig.for_input_size(input_size, **changes)


def _detect_train(args: argparse.Namespace) -> None:
    from sppnet.core.runs import load_model, load_preprocess
    from sppnet.reproduce.detection.detector_io import save_detectors
    from sppnet.reproduce.detection.pipeline import load_proposals, read_split, train_mode
    from sppnet.reproduce.detection.proposals import ProposalCache

    model, pre = load_model(args.checkpoint).eval(), load_preprocess(args.checkpoint)
    config = _detect_config(args, pre.crop)
    classes = _detection_classes(args.data)
    splits = {s: read_split(args.data, s, classes) for s in ("train", "val")}
    cache = ProposalCache(args.out / "proposals")
    proposals = {s: load_proposals(images, cache, config.proposals) for s, images in splits.items()}
    detectors, info = train_mode(model, pre, splits, proposals, args.mode, len(classes), config, print)
    path = save_detectors(args.out, args.checkpoint, args.mode, classes, config, detectors, info)
    print(f"wrote {path}")


def _detect_test(args: argparse.Namespace) -> None:
    from sppnet.reproduce.detection.detector_io import config_from_json, load_detectors
    from sppnet.reproduce.detection.pipeline import load_proposals, read_split, test_mode
    from sppnet.reproduce.detection.proposals import ProposalCache

    info, model, pre, detectors = load_detectors(args.detector)
    config = config_from_json(info["config"])
    images = read_split(args.data, args.split, info["classes"])
    proposals = load_proposals(images, ProposalCache(Path(args.detector) / "proposals"), config.proposals)
    log = None if args.json else print
    row = test_mode(detectors, model, pre, images, proposals, info["mode"], info["classes"], config, log)
    if args.json:
        print(json.dumps({"mode": info["mode"], "split": args.split, **row}))
        return
    for column, result in row["columns"].items():
        print(
            f"{column:10} mAP {100 * result['mAP_11point']:5.1f} (11-point), {100 * result['mAP_all_point']:5.1f} "
            f"(all-point), bootstrap std {100 * result['bootstrap_std']:.1f}"
        )


def _detect_image(args: argparse.Namespace) -> None:
    from sppnet.core.images import load_bgr
    from sppnet.reproduce.detection.detector_io import config_from_json, load_detectors
    from sppnet.reproduce.detection.pipeline import SplitFeatures, detect, extract
    from sppnet.reproduce.detection.proposals import ProposalCache
    from sppnet.reproduce.detection.voc import DetImage

    info, model, pre, detectors = load_detectors(args.detector)
    config = config_from_json(info["config"])
    detector = next((d for d in detectors if d.column == args.column), None)
    if detector is None:
        raise ValueError(f"no detector column {args.column!r}: choose one of {', '.join(d.column for d in detectors)}")
    pixels = load_bgr(args.image)
    image = DetImage(Path(args.image).stem, Path(args.image), pixels.shape[1], pixels.shape[0], [], [], [])
    boxes = ProposalCache(Path(args.detector) / "proposals").get(args.image, pixels, config.proposals)
    split: SplitFeatures = extract(model, pre, [image], [boxes], info["mode"], config, with_gt=False)
    found = []
    for label, detections in enumerate(detect(detector, split, len(info["classes"]), config), start=1):
        found += [(score, info["classes"][label - 1], box) for _, score, box in detections if score >= args.threshold]
    found.sort(key=lambda d: -d[0])
    for score, name, box in found:
        record = {"class": name, "score": round(score, 4), "box": [round(float(v), 1) for v in box]}
        print(json.dumps(record) if args.json else f"{name:12} {score:7.3f}  {record['box']}")
    if not found and not args.json:
        print(f"no detection scored >= {args.threshold} among {len(boxes)} proposals")


def _bench_detect(args: argparse.Namespace) -> None:
    from sppnet.core.runs import load_model, load_preprocess
    from sppnet.reproduce.detection.bench_detect import bench_detect, format_timings

    model, pre = load_model(args.checkpoint), load_preprocess(args.checkpoint)
    config = _detect_config(args, pre.crop)
    rows = bench_detect(model, pre, args.images, proposals=args.max_proposals, config=config, repeats=args.repeats)
    print(json.dumps([r.to_json() for r in rows]) if args.json else format_timings(rows, len(args.images)))


def _detect_arguments(parser: argparse.ArgumentParser) -> None:
    """Options shared by `detect train` and `bench detect`."""
    parser.add_argument("--max-proposals", type=int, default=2000, help="selective search windows per image (2000)")
    parser.add_argument("--epochs", type=float, default=10.0, help="fc fine-tuning passes over the foreground (10)")
    parser.add_argument("--lr", type=float, default=1e-4, help="fc fine-tuning learning rate (the paper's 1e-4)")
    parser.add_argument(
        "--paper-scales",
        action="store_true",
        help="the paper's pixel scales (480..1200, single 688) instead of scaling them by the network's input size",
    )


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    """The options `export` and `bench export` share."""
    parser.add_argument(
        "--scales",
        type=parse_scales,
        default=None,
        metavar="S[,HxW...]",
        help="fixed-size models (default: the run's training sizes)",
    )
    parser.add_argument(
        "--dynamic",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the dynamic-size model, in both SPP forms (default on)",
    )
    parser.add_argument(
        "--precision", type=parse_precisions, default=("fp32", "fp16"), metavar="P[,P]", help="fp32,fp16 (both)"
    )
    parser.add_argument("--max-batch", type=int, default=32, help="largest batch the engines take (32)")
    parser.add_argument("--opt-batch", type=int, default=8, help="batch the engines are tuned for (8)")
    parser.add_argument(
        "--max-size", type=int, default=None, help="dynamic model's largest H and W (2 x largest scale)"
    )


def build_parser() -> argparse.ArgumentParser:
    """All subcommands and their options."""
    parser = argparse.ArgumentParser(prog="sppnet", description="SPP-net: reproduce, export, serve.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    desc = sub.add_parser("describe", help="print a network's layer table with output sizes and parameter counts")
    desc.add_argument("network", metavar="NAME", help=f"one of: {', '.join(NETWORKS)}")
    desc.add_argument("--size", type=parse_size, default=(224, 224), metavar="H[xW]", help="input size (224)")
    desc.add_argument("--no-spp", action="store_true", help="the paper's no-SPP baseline (pool5 to 6x6)")
    desc.add_argument("--classes", type=int, default=1000, help="fc8 outputs (1000)")
    desc.add_argument("--levels", type=parse_levels, default=(6, 3, 2, 1), help="pyramid (6,3,2,1)")
    desc.add_argument("--rule", choices=RULES, default="adaptive", help="bin rule (adaptive)")
    desc.add_argument("--json", action="store_true", help="one JSON list instead of the table")
    desc.set_defaults(run=_describe)

    data = sub.add_parser("data", help="datasets")
    data_sub = data.add_subparsers(dest="data", required=True, metavar="WHAT")
    make = data_sub.add_parser("make", help="generate the built-in dataset (ImageFolder layout + manifest)")
    make.add_argument("--out", required=True, metavar="DIR")
    make.add_argument("--task", choices=["classification", "detection"], default="classification")
    make.add_argument("--source", choices=["fashion-mnist", "shapes"], default="fashion-mnist")
    make.add_argument("--n", type=int, default=3000, help="images in all (3000)")
    make.add_argument("--seed", type=int, default=0)
    make.add_argument(
        "--fashion-mnist-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="idx files (default /usr/share/datasets/fashion-mnist)",
    )
    make.set_defaults(run=_data_make)

    tr = sub.add_parser("train", help="train a network, Caffe-style, single- or multi-size")
    tr.add_argument("--model", required=True, metavar="NAME", help=f"one of: {', '.join(NETWORKS)}")
    tr.add_argument("--data", required=True, metavar="DIR", help="DIR/train/<class>/..., DIR/test/<class>/...")
    tr.add_argument("--out", required=True, metavar="RUN")
    tr.add_argument("--sizes", type=parse_sizes, default=(224,), help="training sizes; two or more = multi-size")
    tr.add_argument(
        "--size-schedule",
        choices=["alternate", "random"],
        default="alternate",
        help="alternate whole epochs between sizes, or draw one in [min, max] per epoch",
    )
    tr.add_argument("--epochs", type=int, default=70)
    tr.add_argument("--batch-size", type=int, default=128)
    tr.add_argument("--lr", type=float, default=0.01)
    tr.add_argument("--milestones", type=parse_sizes, default=None, help="epochs at which lr /= 10")
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--dropout", type=float, default=0.5)
    tr.add_argument("--init-std", type=float, default=0.01, help="Gaussian weight init (Caffe: 0.01)")
    tr.add_argument("--short-side", type=int, default=None, help="resize before cropping (crop * 256/224)")
    tr.add_argument("--no-spp", action="store_true", help="the no-SPP baseline (one size)")
    tr.add_argument("--levels", type=parse_levels, default=(6, 3, 2, 1))
    tr.add_argument("--rule", choices=RULES, default="adaptive")
    tr.add_argument("--on-bad", choices=["skip", "error"], default="skip", help="bad images: skip or stop")
    tr.add_argument("--resume", action="store_true", help="continue RUN from its last finished epoch")
    tr.set_defaults(run=_train)

    ev = sub.add_parser("evaluate", help="top-1/top-5 error of a trained run")
    ev.add_argument("run_dir", metavar="RUN")
    ev.add_argument("--data", required=True, metavar="DIR")
    ev.add_argument("--split", default="test")
    ev.add_argument("--mode", choices=["crop", "10view", "full", "multiview"], default="crop")
    ev.add_argument("--size", type=int, default=None, help="crop/10view: resize views to S; full: short side S")
    ev.add_argument("--json", action="store_true")
    ev.set_defaults(run=_evaluate)

    rep = sub.add_parser("reproduce", help="the paper's experiment on the built-in data, with a report")
    rep.add_argument("--quick", action="store_true", help="a smoke run (300 images, 2 epochs, 1 seed)")
    rep.add_argument("--out", default="artifacts/reproduce", metavar="DIR", help="(artifacts/reproduce)")
    rep.add_argument("--source", choices=["fashion-mnist", "shapes"], default=None)
    rep.add_argument("--seeds", type=parse_sizes, default=None, help="training seeds (0,1,2)")
    rep.add_argument("--epochs", type=int, default=None, help="(20)")
    rep.add_argument("--images", type=int, default=None, help="built-in dataset size (3000)")
    rep.add_argument(
        "--with-detection",
        action="store_true",
        help="also the detection experiment on a built-in VOC-layout set (about 10 more minutes on 2 cores)",
    )
    rep.set_defaults(run=_reproduce)

    ex = sub.add_parser("export", help="ONNX models per scale and a dynamic-size model, with a manifest")
    ex.add_argument("--checkpoint", type=Path, default=None, metavar="RUN", help="a trained run (RUN/model.json)")
    ex.add_argument("--network", default=None, metavar="NAME", help="with no --checkpoint: untrained weights")
    ex.add_argument("--classes", type=int, default=1000, help="untrained: fc8 outputs (1000)")
    ex.add_argument("--seed", type=int, default=0, help="untrained: init seed (0)")
    _export_arguments(ex)
    ex.add_argument("--out", required=True, type=Path, metavar="DIR")
    ex.set_defaults(run=_export)

    par = sub.add_parser("parity", help="ONNX Runtime vs PyTorch for every file of an export")
    par.add_argument("--onnx", required=True, type=Path, metavar="DIR", help="an export directory")
    par.add_argument(
        "--checkpoint",
        type=Path,
        default=None,
        metavar="RUN",
        help="the run exported (default: the one the manifest names)",
    )
    par.add_argument("--sizes", type=int, default=50, help="random sizes for the dynamic models (50)")
    par.add_argument("--batch", type=int, default=4, help="images per fixed-size check (4)")
    par.add_argument("--seed", type=int, default=0)
    par.add_argument("--json", action="store_true")
    par.set_defaults(run=_parity)

    bu = sub.add_parser("build", help="TensorRT engines (tensorrt, else tensorrt_rtx) from an ONNX export")
    bu.add_argument("--onnx", required=True, type=Path, metavar="DIR", help="an `sppnet export` directory")
    bu.add_argument("--out", required=True, type=Path, metavar="ENGINE_DIR")
    bu.add_argument("--precision", type=parse_precisions, default=None, metavar="P[,P]", help="(all exported)")
    bu.add_argument("--kind", choices=["fixed", "dynamic"], action="append", default=None, help="(both)")
    bu.add_argument("--workspace-mb", type=int, default=4096, help="builder scratch memory (4096)")
    bu.add_argument(
        "--compute-capability",
        action="append",
        default=None,
        metavar="X.Y",
        help="TensorRT-RTX target GPUs, repeatable (its defaults: Ampere and later)",
    )
    bu.add_argument("--builder", choices=["tensorrt", "tensorrt_rtx"], default=None, help="(first importable)")
    bu.set_defaults(run=_build)

    inf = sub.add_parser("infer", help="classify images of any size, each routed to the right engine")
    inf.add_argument("images", nargs="+", metavar="IMAGE")
    inf.add_argument(
        "--engines",
        required=True,
        type=Path,
        metavar="DIR",
        help="an engine directory (sppnet build), an ONNX export (sppnet export) or a training run",
    )
    inf.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime", "torch"], default="auto")
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
        choices=["error", "resize"],
        default="error",
        help="a size outside every profile: error, or resize into the range (error)",
    )
    inf.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    inf.add_argument("--topk", type=int, default=5)
    inf.add_argument("--json", action="store_true", help="one JSON object per image and line")
    inf.set_defaults(run=_infer)

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
    sr.set_defaults(run=_serve_repo)

    det = sub.add_parser("detect", help="SPP-net detection (PAPER.md section 7): train, test, image")
    det_sub = det.add_subparsers(dest="detect", required=True, metavar="WHAT")
    dtr = det_sub.add_parser("train", help="fine-tune fc, train SVMs and box regressors on a VOC-layout train split")
    dtr.add_argument("--data", required=True, type=Path, metavar="DIR", help="VOCdevkit, its VOC2007, or data make's")
    dtr.add_argument("--checkpoint", required=True, type=Path, metavar="RUN", help="the classification run")
    dtr.add_argument("--out", required=True, type=Path, metavar="OUT")
    dtr.add_argument("--mode", choices=["spp-1", "spp-5", "rcnn"], default="spp-1")
    _detect_arguments(dtr)
    dtr.set_defaults(run=_detect_train)
    dte = det_sub.add_parser("test", help="AP of a trained detector on a split (VOC07 11-point and all-point)")
    dte.add_argument("--detector", required=True, type=Path, metavar="OUT")
    dte.add_argument("--data", required=True, type=Path, metavar="DIR")
    dte.add_argument("--split", default="test")
    dte.add_argument("--json", action="store_true", help="the AP table as JSON")
    dte.set_defaults(run=_detect_test)
    dim = det_sub.add_parser("image", help="detections on one image")
    dim.add_argument("image", type=Path, metavar="IMAGE")
    dim.add_argument("--detector", required=True, type=Path, metavar="OUT")
    dim.add_argument("--column", default="ftfc7 bb", help="pool5, fc7, ftfc7 or 'ftfc7 bb' (default)")
    dim.add_argument("--threshold", type=float, default=0.0, help="lowest SVM score shown (0)")
    dim.add_argument("--json", action="store_true")
    dim.set_defaults(run=_detect_image)

    bench = sub.add_parser("bench", help="benchmarks that print ratios measured side by side in one run")
    bench_sub = bench.add_subparsers(dest="bench", required=True, metavar="WHAT")
    spp = bench_sub.add_parser("spp", help="SPP forward+backward vs a per-bin loop and a single max-pool")
    spp.add_argument(
        "--sizes",
        type=lambda t: [parse_size(s) for s in t.split(",")],
        default=[(13, 13), (10, 10)],
        metavar="HxW,...",
        help="conv5 sizes (13x13,10x10: ZF-5 at 224/180)",
    )
    spp.add_argument("--batch", type=int, default=32)
    spp.add_argument("--channels", type=int, default=256)
    spp.add_argument("--levels", type=parse_levels, default=(6, 3, 2, 1))
    spp.add_argument("--rule", choices=RULES, default="adaptive")
    spp.add_argument("--repeats", type=int, default=20)
    spp.add_argument("--json", action="store_true")
    spp.set_defaults(run=_bench_spp)
    be = bench_sub.add_parser("export", help="ONNX export and engine build time per file, and sizes")
    be.add_argument(
        "--networks", type=lambda t: t.split(","), default=["zf5_cpu"], metavar="NAME,...", help="(zf5_cpu)"
    )
    _export_arguments(be)
    be.add_argument("--out", type=Path, default=Path("artifacts/bench-export"), metavar="DIR")
    be.add_argument("--no-build", action="store_true", help="export only")
    be.add_argument("--keep", action="store_true", help="keep the files (default: removed after timing)")
    be.add_argument("--json", action="store_true")
    be.set_defaults(run=_bench_export)
    br = bench_sub.add_parser("runtime", help="dispatcher vs direct model calls vs PyTorch eager, mixed sizes")
    br.add_argument("--engines", required=True, metavar="DIR", help="an engine dir, ONNX export or training run")
    br.add_argument("--backend", choices=["auto", "tensorrt", "onnxruntime", "torch"], default="auto")
    br.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    br.add_argument("--images", type=int, default=96, help="stream length (96; a third at the fixed scales)")
    br.add_argument("--max-size", type=int, default=256, help="largest random side (256)")
    br.add_argument("--repeats", type=int, default=9)
    br.add_argument("--no-torch", action="store_true", help="skip the PyTorch eager comparison")
    br.add_argument("--json", action="store_true")
    br.set_defaults(run=_bench_runtime)
    bd = bench_sub.add_parser("detect", help="seconds per image: SPP 1 and 5 scales vs R-CNN mode (conv, fc)")
    bd.add_argument("images", nargs="+", type=Path, metavar="IMAGE")
    bd.add_argument("--checkpoint", required=True, type=Path, metavar="RUN")
    bd.add_argument("--repeats", type=int, default=3)
    bd.add_argument("--json", action="store_true")
    _detect_arguments(bd)
    bd.set_defaults(run=_bench_detect)
    bt = bench_sub.add_parser("train", help="training images/s per size, data loading vs compute")
    bt.add_argument("--data", required=True, metavar="DIR", help="a dataset as `sppnet data make` writes it")
    bt.add_argument("--model", default="zf5_cpu", metavar="NAME")
    bt.add_argument("--sizes", type=parse_sizes, default=(112, 90))
    bt.add_argument("--batch-size", type=int, default=64)
    bt.add_argument("--batches", type=int, default=8, help="batches timed per part and size (8)")
    bt.add_argument("--json", action="store_true")
    bt.set_defaults(run=_bench_train)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one subcommand; a ValueError becomes `sppnet: error: ...` on stderr and exit status 2 (`infer` exits 1
    when some image failed)."""
    args = build_parser().parse_args(argv)
    try:
        code = args.run(args) or 0
    except ValueError as err:
        print(f"sppnet: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(
            "sppnet: interrupted (a training run continues from its last finished epoch with --resume)", file=sys.stderr
        )
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
