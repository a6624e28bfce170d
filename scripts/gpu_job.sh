#!/usr/bin/env bash
# The main job on the GPU machine, in one call (issue 12): the default job on the GPU, then the paper's ZF-5 at
# 224/180 in bf16; both reports land in $OUT.
#
# Here, once (the machine there reaches no network, and Debian's Fashion-MNIST is not on it):
#   mkdir -p .gpu-data && cp -r /usr/share/datasets/fashion-mnist .gpu-data/ && echo /.gpu-data/ >> .git/info/exclude
# Then, through the device tool (about 30 MB carried; the whole call fits in 10 minutes):
#   run(command="bash scripts/gpu_job.sh", carry=[".gpu-data"], timeout_s=600)
#
# There: the checkout goes on the path as `sppnet` (pyproject maps sppnet.X to the folder X): no build, no network.
set -euo pipefail
out="${OUT:-/tmp/sppnet-out}"
mkdir -p "$out" /tmp/sppnet-src/sppnet
for package in core reproduce export engines pipeline cli; do
    ln -sfn "$PWD/$package" "/tmp/sppnet-src/sppnet/$package"
done
export PYTHONPATH="/tmp/sppnet-src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
data="$PWD/.gpu-data/fashion-mnist"
[ -d "$data" ] || { echo "no $data: carry .gpu-data (see this script's header)"; exit 2; }
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
run() {  # NAME ARGS...: one job, its log and its report into $OUT
    local name="$1"; shift
    local start; start=$(date +%s)
    python3 -m sppnet.cli reproduce --device cuda --fashion-mnist-dir "$data" --out "/tmp/sppnet-$name" "$@" \
        > "$out/$name.log" 2>&1 || echo "$name failed (exit $?): see $name.log"
    echo "$name: $(( $(date +%s) - start )) s"
    cp "/tmp/sppnet-$name/report.md" "$out/$name-report.md" 2>/dev/null || true
    tail -3 "$out/$name.log"
}
run default                                          # zf5_cpu, as `sppnet reproduce` on the CPU, on the GPU
run zf5 --network zf5 --precision bf16 --epochs 8    # the paper's ZF-5, sized to fit the call
