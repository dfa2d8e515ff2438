from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import settings
from hypothesis.configuration import set_hypothesis_home_dir

from .cifar_fixture import write_cifar10, write_cifar100

# One torch thread in the test process, as in every child it starts (tests/scripts.py):
# the tests' tensors are small, and on a machine that other jobs keep busy, threads that
# wait for each other make a quick test run many times slower. The examples run in this
# process read OMP_NUM_THREADS too, so their thread count is fixed: the bit-for-bit
# comparisons of resumed and straight runs need one count throughout.
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)


@pytest.fixture
def skip_cifar_checksums(monkeypatch):
    """The fixture files cannot match torchvision's md5 sums of the real dataset: check
    only that each file exists."""
    import os

    import torchvision.datasets.cifar

    monkeypatch.setattr(
        torchvision.datasets.cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath)
    )


@pytest.fixture
def cifar10_dir(tmp_path, skip_cifar_checksums):
    return write_cifar10(tmp_path / "data")


@pytest.fixture
def cifar100_dir(tmp_path, skip_cifar_checksums):
    return write_cifar100(tmp_path / "data100")


# Hypothesis keeps no example database and its caches outside the checkout: the tests
# leave nothing behind.
settings.register_profile("mlo", database=None)
settings.load_profile("mlo")
set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mlo-tests-hypothesis")
