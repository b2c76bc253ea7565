"""Model-level CS, metrics and initialisation on transposed convolutions (decoders, generators)."""

import pytest
import torch
from torch import nn

from convsim import ConvSimilarity, FeatureMapSimilarity, conv_similarity, cs_initialize
from convsim.measure import kernel_cosine_matrix


def _decoder() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.ConvTranspose2d(3, 6, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.ConvTranspose2d(6, 4, 3, stride=1, groups=2),
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, stride=2),
    )


def _loop_filters(layer: nn.ConvTranspose2d) -> torch.Tensor:
    """Output filter i over its group's inputs c: weight[c, i mod (C_out/g)], by index loops."""
    w, g = layer.weight.detach(), layer.groups
    c_in, m_per = w.shape[0] // g, w.shape[1]
    rows = []
    for i in range(m_per * g):
        group, j = divmod(i, m_per)
        rows.append(torch.stack([w[group * c_in + c, j] for c in range(c_in)]))
    return torch.stack(rows)


def test_conv_similarity_selects_transposed_and_forward_layers():
    assert ConvSimilarity(_decoder()).layers == ["0", "2", "4"]


@pytest.mark.parametrize("stride_aware", [False, True])
def test_each_layer_uses_its_own_layout_and_stride(stride_aware):
    net = _decoder()
    reg = ConvSimilarity(net, beta=1.0, stride_aware=stride_aware)
    expected = {}
    for name in ("0", "2", "4"):
        m = net.get_submodule(name)
        stride = m.stride if stride_aware else 1
        transposed = isinstance(m, nn.ConvTranspose2d)
        expected[name] = conv_similarity(m.weight, stride=stride, transposed=transposed, groups=m.groups)
    got = reg.per_layer()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value)


def test_stride_one_cs_of_a_transposed_layer_equals_that_of_its_loop_built_filters():
    layer = _decoder()[2]
    got = ConvSimilarity(nn.Sequential(layer), beta=1.0)()
    torch.testing.assert_close(got, conv_similarity(_loop_filters(layer), groups=layer.groups))


def test_stride_aware_cs_of_a_strided_transposed_layer_is_at_most_the_stride_one_cs():
    net = nn.Sequential(_decoder()[0])
    assert ConvSimilarity(net, stride_aware=True)() < ConvSimilarity(net)()


def test_feature_map_metric_measures_transposed_layers_on_their_output_filters():
    net = _decoder()
    metric = FeatureMapSimilarity(net, layers=["2"])
    metric.update(torch.randn(4, 3, 5, 5))
    result = metric.compute()["2"]
    filters = _loop_filters(net[2])
    cos = kernel_cosine_matrix(filters)
    m = cos.shape[0]
    expected_kcos = cos[~torch.eye(m, dtype=torch.bool)].abs().mean()
    assert result["kernel_abs_cos"] == pytest.approx(float(expected_kcos), rel=1e-6)
    assert result["cs"] == pytest.approx(float(conv_similarity(filters, groups=2)), rel=1e-6)


def test_cs_initialisation_lowers_the_cs_of_a_decoder():
    net = _decoder()
    before = float(ConvSimilarity(net)())
    cs_initialize(net, iterations=20, lr=1e-2)
    assert float(ConvSimilarity(net)()) < before


def test_a_model_without_selectable_layers_still_gets_the_clear_error():
    with pytest.raises(ValueError, match="no conv layer"):
        ConvSimilarity(nn.Sequential(nn.ConvTranspose2d(4, 1, 3), nn.Linear(3, 3)))
