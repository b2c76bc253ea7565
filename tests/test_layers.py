"""Layer selection names layers the same way however the model is wrapped."""

import pytest
import torch
from torch import nn

from convsim import ConvSimilarity, FeatureMapSimilarity
from convsim._internal.layers import filters, select_conv_layers, unwrap
from convsim.penalties import Penalty


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))


def test_unwrap_strips_compile_and_data_parallel_in_any_order():
    net = _net()
    assert unwrap(torch.compile(net)) is net
    assert unwrap(nn.DataParallel(torch.compile(net))) is net
    assert unwrap(torch.compile(nn.DataParallel(net))) is net


def test_compiled_model_layer_names_have_no_orig_mod_prefix():
    net = _net()
    plain = [name for name, _ in select_conv_layers(net)]
    assert plain == ["0", "2"]
    assert [name for name, _ in select_conv_layers(torch.compile(net))] == plain


@pytest.mark.parametrize(
    "make", [ConvSimilarity, FeatureMapSimilarity, lambda m: Penalty(m, "so")], ids=["cs", "fm", "penalty"]
)
def test_every_layer_consumer_uses_unprefixed_names(make):
    net = _net()
    assert make(torch.compile(net)).layers == make(net).layers == ["0", "2"]


@pytest.mark.parametrize("groups", [1, 2])
def test_filters_of_a_transposed_conv_are_what_each_output_channel_applies(groups):
    # Output channel i of a stride-1 transposed conv is the full convolution of input c with
    # filters(i)[c mod group]: check against a forward conv with the flipped filters.
    torch.manual_seed(0)
    layer = nn.ConvTranspose2d(4, 6, 3, groups=groups, bias=False).double()
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = filters(layer)
    assert w.shape == (6, 4 // groups, 3, 3)
    expected = nn.functional.conv2d(x, w.flip(-1, -2), padding=2, groups=groups)
    torch.testing.assert_close(layer(x), expected)


def test_filters_of_a_forward_conv_is_its_weight():
    layer = nn.Conv1d(2, 3, 3)
    assert filters(layer) is layer.weight
