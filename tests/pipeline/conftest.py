"""One quick main job shared by the pipeline tests: every stage runs once, on the procedural shapes data."""

from __future__ import annotations

from pathlib import Path

import pytest

from sppnet.pipeline.config import ReproduceConfig
from sppnet.pipeline.job import JobResult, run_job

QUICK = ReproduceConfig.quick_run(source="shapes", images=200, seeds=(0, 1), serve_images=20, parity_sizes=4)


@pytest.fixture(scope="session")
def quick_job(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, JobResult, list[str]]:
    """The quick job's output directory, its result and what it logged."""
    out = tmp_path_factory.mktemp("job")
    logged: list[str] = []
    return out, run_job(QUICK, out, logged.append), logged
