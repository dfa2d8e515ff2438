"""Data-parallel training (issue 12) against one process, on the CPU with gloo: two ranks
with per-rank batch B compute the updates of one process with batch 2B, hold bit-identical
parameters after every tick, and a checkpoint written on two ranks resumes on one; under
distributed="ddp" and under "fsdp" (FSDP2 shards, gathered to compute)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import mlo

from ..scripts import run_child, torchrun_command
from .levels import CASES, DTYPES, FSDP_CASES, assert_close, parameters, two_levels

TICKS, SAVE_AT = 5, 3


def _two_ranks(tmp_path_factory, dtype: str) -> Path:
    out = tmp_path_factory.mktemp(f"ddp-{dtype}")
    command = [*torchrun_command(), "-m", "tests.distributed.worker"]
    result = run_child([*command, str(out), str(TICKS), str(SAVE_AT), dtype], timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory) -> Path:
    """The two ranks' runs in float64 (every test here reads them)."""
    return _two_ranks(tmp_path_factory, "float64")


@pytest.fixture(scope="module")
def two_ranks_float32(tmp_path_factory) -> Path:
    """The same runs in float32 (the slow selection's: the float64 runs already decide
    every definition, these that float32 rounding stays within its tolerance)."""
    return _two_ranks(tmp_path_factory, "float32")


# In float64, CG on the 3-level chain's middle level (its Hessian is ill-conditioned)
# amplifies the first tick's 3e-14 to 6e-12 by the second (measured).
TOLERANCE = {"float64": 1e-12, "float32": 1e-6}
FLOAT32_DARTS = 5e-6
FLOAT64_THREE_CG = 1e-10
# one_system solves the middle level's indefinite Lagrangian system, whose conditioning
# amplifies the different order of the ranks' sums further: 4.0e-9 in float64 and
# 6.8e-5 in float32 after 5 ticks (measured; the ranks stay bit-identical, and an
# averaging mistake would show at the 1e-2 level).
ONE_SYSTEM = {"float64": 1e-8, "float32": 2e-4}


def tolerance(case: str, dtype: str) -> float:
    if case.endswith("one_system"):
        return ONE_SYSTEM[dtype]
    if (dtype, case) == ("float32", "two-darts"):
        return FLOAT32_DARTS
    if dtype == "float64" and case.startswith("three-cg"):
        return FLOAT64_THREE_CG
    return TOLERANCE[dtype]


RUNS = [(case, "ddp") for case in CASES] + [(case, "fsdp") for case in FSDP_CASES]


def _name(case: str, dtype: str, mode: str) -> str:
    return f"{case}-{dtype}" + ("" if mode == "ddp" else f"-{mode}")


@pytest.mark.parametrize("dtype", ["float64", pytest.param("float32", marks=pytest.mark.slow)])
@pytest.mark.parametrize(("case", "mode"), RUNS)
def test_two_ranks_equal_one_process_with_the_doubled_batch(case, mode, dtype, request):
    torch.set_num_threads(1)
    runs = request.getfixturevalue("two_ranks" if dtype == "float64" else "two_ranks_float32")
    engine = {**CASES, **FSDP_CASES}[case](16, "none", DTYPES[dtype])
    ranks = [torch.load(runs / f"{_name(case, dtype, mode)}.rank{r}.pt") for r in (0, 1)]
    for tick in range(TICKS):
        engine.step()
        # Every rank holds the same bits after every tick ...
        for key, value in ranks[0][tick].items():
            assert torch.equal(value, ranks[1][tick][key]), (case, tick, key)
        # ... and the update of one process with the global batch.
        assert_close(parameters(engine), ranks[0][tick], atol=tolerance(case, dtype))


@pytest.mark.parametrize(("case", "mode"), RUNS)
def test_a_checkpoint_of_two_ranks_resumes_on_one_with_the_doubled_batch(case, mode, two_ranks):
    """Under "fsdp" the file holds full tensors gathered from the shards (parameters and
    optimizer momenta), so one unsharded process resumes it."""
    torch.set_num_threads(1)
    build = {**CASES, **FSDP_CASES}[case]
    engine = build(16)
    engine.load(two_ranks / f"{_name(case, 'float64', mode)}.pt")
    assert engine.tick == SAVE_AT
    # The top level's hypergradient right after loading reads the restored global batches
    # (the current ones re-split, and those unroll recorded): that of one process there.
    reference = build(16)
    for _ in range(SAVE_AT):
        reference.step()
    top = next(iter(engine.problems))
    close = max(1e-10, tolerance(case, "float64"))  # the states differ by that much
    assert_close(engine.hypergradient(top), reference.hypergradient(top), atol=close)
    for _ in range(TICKS - SAVE_AT):
        engine.step()
    final = torch.load(two_ranks / f"{_name(case, 'float64', mode)}.rank0.pt")[-1]
    assert_close(parameters(engine), final, atol=tolerance(case, "float64"))


@pytest.mark.parametrize("case", list(FSDP_CASES))
def test_fsdp_shards_parameters_and_momenta_and_resumes_on_the_same_ranks(case, two_ranks):
    name = f"{case}-float64-fsdp"
    shards = [torch.load(two_ranks / f"{name}.shards.rank{r}.pt") for r in (0, 1)]
    assert any(key.endswith("momentum") for key in shards[0]) == ("two" in case)
    for key, (local, full, rows) in shards[0].items():
        # Each rank holds its slice of the rows (FSDP2's Shard(0)): they add up to the
        # tensor, and a rank holds less than all of it unless it has one row.
        assert local + shards[1][key][0] == full, key
        assert local < full or rows == 1, key
    # A checkpoint written on two sharded ranks, resumed on two: the run goes on as if
    # never stopped (its full tensors sliced back into shards, momenta included).
    final = torch.load(two_ranks / f"{name}.rank0.pt")[-1]
    for rank in (0, 1):
        resumed = torch.load(two_ranks / f"{name}.resumed.rank{rank}.pt")
        assert_close(resumed, final, atol=1e-13)


def test_ddp_without_a_process_group_says_how_to_start_one():
    with pytest.raises(mlo.SetupError, match="torchrun --nproc_per_node"):
        two_levels("cg", 8, "ddp")
