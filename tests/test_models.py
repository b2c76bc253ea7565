"""convsim.models: shapes, exact parameter counts against hand formulas, layers, gradients, errors."""

import math

import pytest
import torch
from torch import nn

from convsim._internal.layers import select_conv_layers
from convsim.models import CLASSIFIERS, build, count_parameters


def convs(model):
    return [m for m in model.modules() if isinstance(m, nn.Conv2d)]


def cnn1_params(cin, classes, width, h, w):
    """Hand count: four 5x5 convs with bias, then Linear(c·(h-16)·(w-16))."""
    c = round(4 * width)
    conv = (cin * c * 25 + c) + 3 * (c * c * 25 + c)
    return conv + c * (h - 16) * (w - 16) * classes + classes


def cnn2_params(cin, classes, width):
    a, b, c = (round(k * width) for k in (16, 32, 64))
    conv = 9 * (cin * a + a * a + a * b + b * b + b * c + c * c)
    bn = 2 * 2 * (a + b + c)
    return conv + bn + c * classes + classes


def resnet18_params(cin, classes, width):
    """Hand count of the CIFAR ResNet18: stem, 8 basic blocks, 3 projection shortcuts, Linear."""
    w = round(64 * width)
    planes = [w, 2 * w, 4 * w, 8 * w]
    total = 9 * cin * w + 2 * w  # stem conv + BN
    prev = w
    for p in planes:
        for j in range(2):
            total += 9 * prev * p + 2 * p + 9 * p * p + 2 * p
            if j == 0 and prev != p:
                total += prev * p + 2 * p
            prev = p
    return total + prev * classes + classes


# ---------------------------------------------------------------------------------------------
# parameter counts and layers
# ---------------------------------------------------------------------------------------------


def test_cnn1_has_the_released_7086_parameters():
    assert count_parameters(build("cnn1")) == 7086


def test_resnet18_has_11173962_parameters():
    assert count_parameters(build("resnet18", in_channels=3)) == 11_173_962


@pytest.mark.parametrize("cin,classes,width,size", [(1, 10, 1.0, 28), (3, 7, 2.0, 20), (2, 10, 0.5, (30, 24))])
def test_cnn1_parameter_count_matches_formula(cin, classes, width, size):
    h, w = (size, size) if isinstance(size, int) else size
    model = build("cnn1", in_channels=cin, num_classes=classes, width=width, input_size=size)
    assert count_parameters(model) == cnn1_params(cin, classes, width, h, w)


@pytest.mark.parametrize("cin,classes,width", [(1, 10, 1.0), (3, 100, 0.5), (1, 10, 1.5)])
def test_cnn2_parameter_count_matches_formula(cin, classes, width):
    assert count_parameters(build("cnn2", in_channels=cin, num_classes=classes, width=width)) == cnn2_params(
        cin, classes, width
    )


@pytest.mark.parametrize("cin,classes,width", [(3, 10, 0.25), (1, 10, 0.125), (3, 100, 0.5)])
def test_resnet18_parameter_count_matches_formula(cin, classes, width):
    model = build("resnet18", in_channels=cin, num_classes=classes, width=width)
    assert count_parameters(model) == resnet18_params(cin, classes, width)


@pytest.mark.parametrize("name,n", [("cnn1", 4), ("cnn2", 6), ("resnet18", 20)])
def test_conv_layer_counts(name, n):
    assert len(convs(build(name, width=0.25 if name == "resnet18" else 1.0))) == n


def test_cnn1_layers_are_the_released_ones():
    model = build("cnn1")
    shapes = [
        (c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.bias is not None) for c in convs(model)
    ]
    assert shapes == [(1, 4, (5, 5), (1, 1), (0, 0), True)] + [(4, 4, (5, 5), (1, 1), (0, 0), True)] * 3
    assert model[0] is model.conv1 and model.fc.in_features == 576
    assert sum(isinstance(m, nn.ReLU) for m in model.modules()) == 4


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_models_return_logits_not_probabilities(name):
    model = build(name, width=0.25 if name == "resnet18" else 1.0)
    assert not any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules())
    assert isinstance(list(model.modules())[-1], nn.Linear)


def test_resnet18_is_the_cifar_variant():
    model = build("resnet18", in_channels=3, width=0.25)
    stem = model.conv1
    assert (stem.kernel_size, stem.stride, stem.padding, stem.bias) == ((3, 3), (1, 1), (1, 1), None)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert all(c.bias is None for c in convs(model))
    strides = [model.get_submodule(f"layer{i}")[0].conv1.stride for i in range(1, 5)]
    assert strides == [(1, 1), (2, 2), (2, 2), (2, 2)]
    shortcuts = [c for name, c in model.named_modules() if "shortcut" in name and isinstance(c, nn.Conv2d)]
    assert [(c.kernel_size, c.stride) for c in shortcuts] == [((1, 1), (2, 2))] * 3


def test_conv_layers_are_selected_by_the_shared_rule():
    names = [n for n, _ in select_conv_layers(build("cnn1"))]
    assert names == ["conv1", "conv2", "conv3", "conv4"]


def test_cnn2_is_larger_than_cnn1():
    assert count_parameters(build("cnn2")) > 5 * count_parameters(build("cnn1"))


# ---------------------------------------------------------------------------------------------
# forward / backward
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,cin,width,size,classes",
    [
        ("cnn1", 1, 1.0, 28, 10),
        ("cnn1", 3, 0.5, 32, 5),
        ("cnn1", 1, 2.0, (17, 21), 10),
        ("cnn2", 1, 1.0, 28, 10),
        ("cnn2", 3, 0.5, 32, 100),
        ("cnn2", 1, 1.0, 8, 10),
        ("cnn2", 2, 0.25, (9, 13), 3),
        ("resnet18", 3, 0.125, 32, 10),
        ("resnet18", 1, 0.125, 28, 10),
        ("resnet18", 1, 0.0625, 8, 4),
    ],
)
def test_output_shape(name, cin, width, size, classes):
    torch.manual_seed(0)
    h, w = (size, size) if isinstance(size, int) else size
    model = build(name, in_channels=cin, num_classes=classes, width=width, input_size=size)
    out = model(torch.randn(3, cin, h, w))
    assert out.shape == (3, classes) and out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_gradients_reach_every_parameter(name):
    torch.manual_seed(0)
    model = build(name, width=0.125 if name == "resnet18" else 1.0)
    x, y = torch.randn(4, 1, 28, 28), torch.arange(4)
    nn.functional.cross_entropy(model(x), y).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_channels_last_input_gives_the_same_logits(name):
    torch.manual_seed(0)
    model = build(name, width=0.125 if name == "resnet18" else 1.0).eval()
    x = torch.randn(2, 1, 28, 28)
    ref = model(x)
    out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


def test_cnn1_matches_a_hand_written_forward():
    torch.manual_seed(0)
    model = build("cnn1").double()
    x = torch.randn(2, 1, 28, 28, dtype=torch.float64)
    h = x
    for conv in convs(model):
        h = torch.relu(nn.functional.conv2d(h, conv.weight, conv.bias))
    ref = h.reshape(2, -1) @ model.fc.weight.T + model.fc.bias
    torch.testing.assert_close(model(x), ref)


def test_builder_uses_the_callers_seed():
    torch.manual_seed(123)
    a = build("cnn2").state_dict()
    torch.manual_seed(123)
    b = build("cnn2").state_dict()
    c = build("cnn2").state_dict()  # not re-seeded: different draws
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["conv1.weight"], c["conv1.weight"])


def test_count_parameters_trainable_only():
    model = build("cnn1")
    model.conv1.requires_grad_(False)
    assert count_parameters(model, trainable_only=True) == 7086 - 104


# ---------------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------------


def test_unknown_model_lists_valid_names():
    with pytest.raises(ValueError, match="unknown model 'vgg19'; expected one of cnn1, cnn2, resnet18"):
        build("vgg19")


@pytest.mark.parametrize("width", [0, -1.0, math.nan, math.inf, True, "1"])
def test_bad_width_rejected(width):
    with pytest.raises(ValueError, match="width must be a positive finite number"):
        build("cnn1", width=width)


def test_width_rounding_to_zero_channels_rejected():
    with pytest.raises(ValueError, match=r"round\(4·0\.1\) = 0 channels"):
        build("cnn1", width=0.1)


@pytest.mark.parametrize(
    "name,size,match",
    [
        ("cnn1", 16, "at least 17x17"),
        ("cnn2", 3, "at least 4x4"),
        ("cnn1", 0, "positive int or a pair"),
        ("resnet18", (32,), "positive int or a pair"),
    ],
)
def test_input_too_small_rejected(name, size, match):
    with pytest.raises(ValueError, match=match):
        build(name, input_size=size)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"in_channels": 0}, "in_channels must be a positive int"),
        ({"num_classes": 1.5}, "num_classes must be a positive int"),
    ],
)
def test_bad_channels_or_classes_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        build("cnn2", **kwargs)


def test_count_parameters_rejects_non_module():
    with pytest.raises(TypeError, match="model must be an nn.Module"):
        count_parameters([torch.zeros(3)])


# --- the generative models ---------------------------------------------------------------------


def test_vae_decoder_is_made_of_transposed_convs_with_stride_two_upsampling():
    m = build("vae")
    convs = [mod for mod in m.decoder.modules() if isinstance(mod, (nn.Conv2d, nn.ConvTranspose2d))]
    assert all(isinstance(mod, nn.ConvTranspose2d) for mod in convs)
    assert [mod.stride for mod in convs] == [(1, 1), (2, 2), (2, 2)]


def test_vae_nelbo_equals_reconstruction_plus_kl_computed_by_hand():
    torch.manual_seed(0)
    m = build("vae").double()
    x = torch.rand(3, 1, 28, 28, dtype=torch.float64)
    torch.manual_seed(1)
    got = m.nelbo(x)
    torch.manual_seed(1)
    logits, mu, logvar = m(x)
    p = torch.sigmoid(logits)
    recon = -(x * p.log() + (1 - x) * (1 - p).log()).sum((1, 2, 3))
    var = logvar.exp()
    # KL(N(mu, var) || N(0, 1)) per coordinate, written from the Gaussian densities' formula
    kl = (-0.5 * torch.log(var) + 0.5 * (var + mu**2) - 0.5).sum(1)
    torch.testing.assert_close(got, recon + kl)


@pytest.mark.parametrize("size", [28, 32, (16, 24)])
def test_generative_models_reproduce_their_input_size(size):
    h, w = (size, size) if isinstance(size, int) else size
    vae_model, gan = build("vae", input_size=size), build("dcgan", input_size=size)
    assert vae_model.decode(torch.zeros(2, vae_model.latent_dim)).shape == (2, 1, h, w)
    images = gan(torch.zeros(2, gan.latent_dim))
    assert images.shape == (2, 1, h, w) and gan.discriminator(images).shape == (2,)


@pytest.mark.parametrize("name", ["vae", "dcgan"])
def test_generative_models_refuse_sizes_not_divisible_by_four(name):
    with pytest.raises(ValueError, match="divisible by 4"):
        build(name, input_size=30)


def test_dcgan_generator_outputs_lie_in_the_unit_interval():
    torch.manual_seed(0)
    images = build("dcgan")(torch.randn(8, 32) * 10)
    assert images.min() >= 0 and images.max() <= 1
