"""convsim._internal.modes.eval_mode: eval inside the block, every module's own mode restored after it."""

import pytest
from torch import nn

from convsim._internal.modes import eval_mode


def test_eval_mode_restores_mixed_modes_also_after_an_error():
    net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.Dropout())
    net[1].eval()  # a frozen BatchNorm inside a model in train mode
    before = [m.training for m in net.modules()]
    with pytest.raises(RuntimeError, match="boom"), eval_mode(net):
        assert not any(m.training for m in net.modules())
        raise RuntimeError("boom")
    assert [m.training for m in net.modules()] == before == [True, True, False, True]


def test_eval_mode_leaves_an_eval_model_in_eval():
    net = nn.Sequential(nn.Linear(2, 2), nn.Dropout()).eval()
    with eval_mode(net) as inside:
        assert inside is net
    assert not any(m.training for m in net.modules())
