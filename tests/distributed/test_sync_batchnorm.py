"""mlo.SyncBatchNorm (issue 12): two ranks with half the batch each compute what one
process's BatchNorm computes on the whole batch, first and second derivatives included;
without a process group it is BatchNorm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import mlo

from ..scripts import run_child, torchrun_command
from .batchnorm import batch, network, products


def test_two_ranks_normalise_over_the_global_batch_to_second_order(tmp_path):
    command = [*torchrun_command(), "-m", "tests.distributed.batchnorm", str(tmp_path)]
    result = run_child(command, timeout=180)
    assert result.returncode == 0, result.stderr[-4000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]

    net = network()  # plain BatchNorm, the whole batch on one process
    x, y, v = batch()
    out, grads, hvp = products(net, x, y, v)
    running = {k: b.clone() for k, b in net.named_buffers()}
    evaluated = net.eval()(x).detach()

    def close(a, b):
        assert torch.allclose(a, b, rtol=0, atol=1e-12), (a - b).abs().max()

    close(torch.cat([r["out"] for r in ranks]), out)
    close(torch.cat([r["eval"] for r in ranks]), evaluated)
    for r in ranks:
        for mine, truth in zip(r["grad"], grads):
            close(mine, truth)
        for mine, truth in zip(r["hvp"], hvp):
            close(mine, truth)
        assert r["running"].keys() == running.keys()
        for key, value in running.items():
            close(r["running"][key].double(), value.double())
    # Per-rank statistics (plain BatchNorm on each half) would be another function ...
    halves = torch.cat([network()(x[:4]), network()(x[4:])]).detach()
    assert (halves - out).abs().max() > 1e-2
    # ... which is what an observation on rank 0 alone computes (rather than waiting).
    with mlo.observing([alone := network()]):
        close(ranks[0]["observed"], alone(x[:4]))


def test_without_a_process_group_it_is_batchnorm_and_keeps_the_parameters():
    net, reference = network(), network()
    weight, mean = net[1].weight, net[1].running_mean
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)  # created before the conversion
    assert mlo.convert_sync_batchnorm(net) is net
    assert isinstance(net[1], mlo.SyncBatchNorm) and isinstance(net[8], mlo.SyncBatchNorm)
    assert net[1].weight is weight and net[1].running_mean is mean
    x, y, _ = batch()
    out = net(x)
    assert torch.equal(out, reference(x))
    for key, value in reference.named_buffers():
        assert torch.equal(dict(net.named_buffers())[key], value), key
    torch.nn.functional.cross_entropy(out, y).backward()
    before = weight.detach().clone()
    optimizer.step()
    assert not torch.equal(net[1].weight, before)  # the optimizer still trains the layer
    alone = mlo.convert_sync_batchnorm(nn.BatchNorm2d(3).eval())
    assert isinstance(alone, mlo.SyncBatchNorm) and not alone.training


def test_a_batch_of_single_values_is_refused_by_name():
    with pytest.raises(ValueError, match="SyncBatchNorm expects a batch of shape"):
        mlo.SyncBatchNorm(3)(torch.zeros(3))
