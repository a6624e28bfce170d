#!/usr/bin/env bash
# There (the GPU machine, in the repository's root): gather the carried onnxruntime-gpu parts, install them, put this
# checkout on the path as `sppnet`, and run the one GPU check; its JSON and log land in $OUT.
#
#   bash scripts/gpu_check.sh --collect     keep the parts this call carried (in /tmp, which a warm machine keeps)
#   bash scripts/gpu_check.sh [ARGS...]     install and run `python -m sppnet.engines.gpu_check ARGS`
#
# Without the parts the check still runs: ONNX Runtime's CUDA step then records why it was refused.
set -euo pipefail
parts=/tmp/sppnet-gpu-parts
site=/tmp/sppnet-site
out="${OUT:-/tmp/sppnet-out}"
mkdir -p "$parts" "$out"
if compgen -G ".gpu-parts/ortgpu.tar.xz.part-*" > /dev/null; then
    cp .gpu-parts/ortgpu.tar.xz.part-* "$parts"/
fi
if [ "${1:-}" = "--collect" ]; then
    ls -l "$parts"
    exit 0
fi
if compgen -G "$parts/ortgpu.tar.xz.part-*" > /dev/null && [ ! -d "$site/onnxruntime" ]; then
    mkdir -p "$site"
    cat "$parts"/ortgpu.tar.xz.part-* | xz -d | tar -C "$site" -xf -
fi
[ -d "$site/onnxruntime" ] && export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
# this checkout as the `sppnet` namespace (pyproject maps sppnet.X to the folder X): no build, no network
mkdir -p /tmp/sppnet-src/sppnet
for package in core reproduce export engines pipeline cli; do
    ln -sfn "$PWD/$package" "/tmp/sppnet-src/sppnet/$package"
done
export PYTHONPATH="/tmp/sppnet-src${PYTHONPATH:+:$PYTHONPATH}"
python3 - <<'PY'
import onnxruntime, torch, sppnet.engines
print("sppnet", sppnet.engines.__file__)
print("torch", torch.__version__, "cuda", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
print("onnxruntime", onnxruntime.__version__, onnxruntime.__file__, onnxruntime.get_available_providers())
PY
export PYTHONUNBUFFERED=1
status=0
python3 -m sppnet.engines.gpu_check --out /tmp/sppnet-gpu-check --json "$out/gpu_check.json" "$@" \
    > "$out/gpu_check.log" 2>&1 || status=$?
grep -v "^W[0-9]\{4\} \|^[][ {}]" "$out/gpu_check.log" | tail -20 || true
python3 - "$out/gpu_check.json" <<'PY'
import json, sys
report = json.load(open(sys.argv[1]))
print("ok:", report.get("ok"), "elapsed:", report.get("elapsed_s"), "skipped:", report.get("skipped"), "errors:", report.get("errors"))
steps = report.get("steps", {})
for name, step in steps.items():
    if isinstance(step, dict) and "parity" in step:
        for row in step["parity"]:
            print(f"{name:18} {row['file'][:52]:52} rel {row['max_rel']:.2e} top1 {row['top1_agree']:.3f} {'ok' if row['ok'] else 'NO'}")
bench = steps.get("bench")
if bench:
    for row in bench["rows"]:
        ratios = " ".join(f"{k} {v}" for k, v in row.items() if k.startswith("x_"))
        print(f"{row['stream']:22} {row['contender']:24} {row['images_per_s']:10.1f} {ratios}")
    print("latency", bench["latency"], "fed/bare", bench.get("fed_over_bare"))
    for name, t in bench.get("targets", {}).items():
        print(f"target {name}: {t}")
PY
exit $status
