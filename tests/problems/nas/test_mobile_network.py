"""The ImageNet (mobile setting) evaluation network and the multiply-add counter."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from problems.nas.evaluation import MobileNetwork, count_parameters
from problems.nas.flops import multiply_adds
from problems.nas.genotype import DARTS_V2


@pytest.fixture(scope="module")
def mobile() -> MobileNetwork:
    torch.manual_seed(0)
    return MobileNetwork(DARTS_V2)


def test_darts_v2_has_the_published_parameter_count(mobile):
    # Liu et al. (2019), Table 3: 4.7 M parameters (auxiliary head not counted).
    assert abs(count_parameters(mobile) - 4.7e6) <= 0.1e6


def test_darts_v2_stays_under_600_million_multiply_adds(mobile):
    # Published: 574 M. Counting convolutions and linear layers alone gives 530 M; the
    # paper does not say what else it counted (pooling, additions, batch norm).
    count = multiply_adds(mobile, (3, 224, 224))
    assert 500e6 < count < 600e6
    assert mobile.training  # the count leaves the mode as it found it


def test_the_stem_and_reductions_give_7x7_features(mobile):
    shapes = []
    hook = mobile.cells[-1].register_forward_hook(lambda m, i, o: shapes.append(o.shape))
    try:
        logits, aux = mobile(torch.randn(2, 3, 224, 224))
    finally:
        hook.remove()
    assert logits.shape == aux.shape == (2, 1000)
    assert shapes == [(2, 4 * 4 * 48, 7, 7)]  # 14 cells: 48 → 96 → 192 channels, 4 nodes
    mobile.eval()
    try:
        assert mobile(torch.randn(1, 3, 224, 224))[1] is None
    finally:
        mobile.train()


def test_multiply_adds_by_hand_on_a_small_network():
    net = nn.Sequential(
        nn.Conv2d(3, 8, 3, stride=2, padding=1),  # 8×8×8 outputs × 3·9 = 13,824
        nn.BatchNorm2d(8),
        nn.Conv2d(8, 8, 3, padding=1, groups=8),  # 512 outputs × 1·9 = 4,608
        nn.Conv2d(8, 4, 1),  # 4×8×8 = 256 outputs × 8 = 2,048
        nn.Flatten(),
        nn.Linear(256, 10),  # 2,560
    )
    assert multiply_adds(net, (3, 16, 16)) == 13_824 + 4_608 + 2_048 + 2_560
    assert not any(module._forward_hooks for module in net.modules())
