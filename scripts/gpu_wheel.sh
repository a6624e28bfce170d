#!/usr/bin/env bash
# Here (no GPU needed): fetch onnxruntime-gpu (CUDA 13) for the GPU machine's Python 3.12 and cut it into parts
# small enough to carry, one part per device call (each call carries at most 64 MiB).
#
#   scripts/gpu_wheel.sh [VERSION]      -> .gpu-parts/ortgpu.tar.xz.part-aa, -ab, ...
#
# The wheel is unpacked and re-packed as an xz tarball of its site-packages files (its .so files compress far
# better under xz than in the wheel's zip). .gpu-parts/ and .whl/ are listed in .git/info/exclude, so they travel
# only when a call names them in `carry`.
set -euo pipefail
version="${1:-1.31.1}"
root="$(git rev-parse --show-toplevel)"
cd "$root"
for ignored in /.whl/ /.gpu-parts/; do
    grep -qxF "$ignored" .git/info/exclude || echo "$ignored" >> .git/info/exclude
done
mkdir -p .whl .gpu-parts
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    -d .whl "onnxruntime-gpu==${version}"
wheel="$(ls .whl/onnxruntime_gpu-"${version}"-*.whl | head -1)"
staging="$(mktemp -d)"
trap 'rm -rf "$staging"' EXIT
python3 -m zipfile -e "$wheel" "$staging"
rm -f .gpu-parts/ortgpu.tar.xz.part-*
tar -C "$staging" -cf - . | xz -T0 -6 | split -b 50m - .gpu-parts/ortgpu.tar.xz.part-
ls -l .gpu-parts
echo "carry each part in its own call, back to back (a warm machine keeps /tmp for 30 s):"
for part in .gpu-parts/ortgpu.tar.xz.part-*; do
    echo "  run(command='bash scripts/gpu_check.sh --collect', carry=['$part'])"
done
echo "then: run(command='bash scripts/gpu_check.sh', timeout_s=600)"
