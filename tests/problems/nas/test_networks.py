from __future__ import annotations

import pytest
import torch

from problems.nas import DARTS_V2, ArchitectureWeights, EvalNetwork, Supernet, count_parameters


@pytest.mark.parametrize("classes", [10, 100])
@pytest.mark.parametrize("partial_channels", [1, 4])
def test_supernet_forward_shape(classes, partial_channels):
    net = Supernet(classes, layers=5, init_channels=8, partial_channels=partial_channels)
    arch = ArchitectureWeights(edge_normalization=partial_channels > 1)
    out = net(torch.randn(2, 3, 32, 32), arch.normalized())
    assert out.shape == (2, classes)
    out.sum().backward()
    assert all(p.grad is not None for p in net.classifier.parameters())


def test_architecture_gradient_reaches_alpha_and_beta():
    net = Supernet(10, layers=3, init_channels=8, partial_channels=2)
    arch = ArchitectureWeights(edge_normalization=True)
    net(torch.randn(2, 3, 16, 16), arch.normalized()).sum().backward()
    for p in arch.parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0


def test_partial_channels_must_divide_channels():
    with pytest.raises(ValueError, match="must divide"):
        Supernet(10, layers=3, init_channels=6, partial_channels=4)


@pytest.mark.parametrize("classes", [10, 100])
def test_evaluation_network_forward_shapes(classes):
    net = EvalNetwork(DARTS_V2, classes, layers=8, init_channels=16)
    net.drop_path_prob = 0.2
    net.train()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == aux.shape == (2, classes)
    net.eval()
    logits, aux = net(torch.randn(2, 3, 32, 32))
    assert logits.shape == (2, classes) and aux is None


def test_darts_v2_has_the_papers_3_3_million_parameters():
    net = EvalNetwork(DARTS_V2, 10, layers=20, init_channels=36, auxiliary=True)
    millions = count_parameters(net) / 1e6
    assert abs(millions - 3.3) <= 0.1, millions


def test_drop_path_is_identity_at_zero_and_in_eval():
    from problems.nas.evaluation import drop_path

    x = torch.randn(8, 4, 2, 2)
    assert torch.equal(drop_path(x, 0.0), x)
    kept = drop_path(torch.ones(1000, 1, 1, 1), 0.3)
    assert abs(float((kept > 0).float().mean()) - 0.7) < 0.06
    assert torch.allclose(kept[kept > 0], torch.tensor(1 / 0.7))


def test_auxiliary_head_pools_as_darts_where_it_leaves_two_by_two_else_adaptively():
    from problems.nas.evaluation import AuxiliaryHead

    torch.manual_seed(0)
    head = AuxiliaryHead(4, 10, stride=3).eval()
    x = torch.randn(2, 4, 8, 8)  # CIFAR: DARTS' 5×5 pooling, stride 3, gives 2×2
    darts = head.classifier(
        torch.nn.functional.adaptive_avg_pool2d(
            head.features(torch.nn.functional.avg_pool2d(torch.relu(x), 5, 3)), 1
        ).flatten(1)
    )
    assert torch.equal(head(x), darts)
    # 7×7 (Fashion-MNIST's 28×28 after two reductions) would pool to 1×1: adaptive 2×2
    y = torch.randn(2, 4, 7, 7)
    adaptive = head.classifier(
        torch.nn.functional.adaptive_avg_pool2d(
            head.features(torch.nn.functional.adaptive_avg_pool2d(torch.relu(y), 2)), 1
        ).flatten(1)
    )
    assert torch.equal(head(y), adaptive)


def test_evaluation_network_with_auxiliary_head_runs_on_28_by_28_grey_images():
    from problems.nas.evaluation import EvalNetwork
    from problems.nas.genotype import random_genotype

    net = EvalNetwork(random_genotype(0), 10, layers=4, init_channels=4, in_channels=1)
    logits, aux = net.train()(torch.randn(2, 1, 28, 28))
    assert logits.shape == aux.shape == (2, 10)
