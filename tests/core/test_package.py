"""The package surface: public names load on first use, and preprocessing loads without PyTorch."""

from __future__ import annotations

import subprocess
import sys

import sppnet.core as core


def test_image_decoding_and_preprocessing_import_without_torch() -> None:
    code = (
        "import sys; sys.modules['torch'] = None; "
        "import sppnet.core.images, sppnet.core.preprocess, sppnet.core.bins; "
        "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None]"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_every_public_name_resolves() -> None:
    for name in core.__all__:
        assert getattr(core, name) is not None
