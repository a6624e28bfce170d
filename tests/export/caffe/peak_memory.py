"""Peak memory of one `import_caffe`, against the caffemodel's size: prints one JSON object.

    python3 tests/export/caffe/peak_memory.py NET.prototxt WEIGHTS.caffemodel OUT_RUN

The baseline is the process's resident set after importing torch and sppnet; the peak is the kernel's high-water
mark (VmHWM, reset through /proc/self/clear_refs before the import) or, where that cannot be reset, ru_maxrss.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main(prototxt: str, caffemodel: str, out: str) -> None:
    from sppnet.export.caffe import import_caffe

    baseline = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        how = "VmHWM"
    except OSError:
        how = "ru_maxrss"
    start = time.perf_counter()
    import_caffe(prototxt, caffemodel, out)
    seconds = time.perf_counter() - start
    peak = _status_mb("VmHWM") if how == "VmHWM" else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    size = os.path.getsize(caffemodel) / 2**20
    print(
        json.dumps(
            {
                "caffemodel_mb": round(size, 1),
                "baseline_mb": round(baseline, 1),
                "peak_mb": round(peak, 1),
                "peak_over_baseline_mb": round(peak - baseline, 1),
                "ratio": round((peak - baseline) / size, 2),
                "measured_by": how,
                "seconds": round(seconds, 1),
            }
        )
    )


if __name__ == "__main__":
    main(*sys.argv[1:4])
