"""destroy_process_group() ends gloo's threads after an mlo run (two ranks, gloo, CPU).

torch.distributed.nn.functional reads its functions' default group when first imported;
mlo imports FSDP lazily, which imports that module, so under an existing process group
the group stayed referenced for the life of the process, its threads outlived
destroy_process_group(), and at exit a rank of a loaded machine aborted ("terminate called
without an active exception") after a run that had succeeded. mlo now imports the module
with itself, before any group exists."""

from __future__ import annotations

import json
import sys

import pytest

from ..scripts import run_child, torchrun_command


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/task")
def test_no_gloo_thread_outlives_destroy_process_group(tmp_path):
    command = [*torchrun_command(), "-m", "tests.distributed.shutdown", str(tmp_path)]
    result = run_child(command, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    for rank in (0, 1):
        names = json.loads((tmp_path / f"threads.rank{rank}.json").read_text())
        assert names, "no thread listed"
        assert not [n for n in names if "gloo" in n], (rank, names)
