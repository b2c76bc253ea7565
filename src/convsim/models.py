"""The paper's models (the authors' MNIST CNN1, a stronger shallow CNN2, the CIFAR ResNet18) and
two small generative models (a convolutional VAE and a DCGAN) whose decoders are transposed convs.

``build(name, in_channels=1, num_classes=10, width=1.0, input_size=28)`` returns an
``nn.Module``. The classifiers map (N, C, H, W) images to (N, num_classes) **logits** (no softmax:
use ``cross_entropy``); :class:`VAE` and :class:`DCGAN` document their own interfaces.
Layers keep PyTorch's default initialisation (DCGAN: its own) and the builder draws from the
global RNG without seeding it: call ``torch.manual_seed`` first for reproducible weights.
``width`` scales every hidden channel count to ``round(base · width)`` (Python ``round``), so
CS/orthogonality effects can be compared across model sizes.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import nn

__all__ = [
    "MODELS",
    "CLASSIFIERS",
    "GENERATIVE_MODELS",
    "build",
    "cnn1",
    "cnn2",
    "resnet18",
    "vae",
    "dcgan",
    "vae_nelbo",
    "count_parameters",
    "BasicBlock",
    "ResNet",
    "VAE",
    "DCGAN",
]

CLASSIFIERS = ("cnn1", "cnn2", "resnet18")
GENERATIVE_MODELS = ("vae", "dcgan")
MODELS = CLASSIFIERS + GENERATIVE_MODELS
Size = int | tuple[int, int]


def _channels(base: int, width: float) -> int:
    c = int(round(base * width))
    if c < 1:
        raise ValueError(f"width {width} gives round({base}·{width}) = {c} channels; need >= 1")
    return c


def _hw(input_size: Size) -> tuple[int, int]:
    if isinstance(input_size, int) and not isinstance(input_size, bool):
        input_size = (input_size, input_size)
    if (
        not isinstance(input_size, tuple)
        or len(input_size) != 2
        or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in input_size)
    ):
        raise ValueError(f"input_size must be a positive int or a pair (H, W), got {input_size!r}")
    return input_size


def cnn1(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: Size = 28) -> nn.Sequential:
    """The CS authors' released MNIST CNN ("CNN1"), returning logits.

    Four ``Conv2d(·, c, 5)`` (c = round(4·width); stride 1, no padding, with bias), each followed by
    ReLU; flatten; ``Linear(c·(H−16)·(W−16), num_classes)``. On 1×28×28 the maps are
    28→24→20→16→12 and the Linear takes 4·12·12 = 576 inputs: 7,086 parameters at width 1
    (104 + 3·404 conv, 5,770 Linear). The released model ends with a Softmax that is then fed to
    ``CrossEntropyLoss`` (softmax applied twice); this one returns logits instead.
    Needs H, W >= 17. Layers are named ``conv1..conv4``, ``relu1..relu4``, ``flatten``, ``fc``
    (``model[0]`` is ``conv1``).

    Example:
        >>> m = cnn1()
        >>> m(torch.zeros(2, 1, 28, 28)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 7086)
    """
    h, w = _hw(input_size)
    if min(h, w) < 17:
        raise ValueError(f"cnn1 needs inputs of at least 17x17 (four valid 5x5 convs), got {h}x{w}")
    c = _channels(4, width)
    layers: list[tuple[str, nn.Module]] = []
    for i in range(4):
        layers += [(f"conv{i + 1}", nn.Conv2d(in_channels if i == 0 else c, c, 5)), (f"relu{i + 1}", nn.ReLU())]
    layers += [("flatten", nn.Flatten()), ("fc", nn.Linear(c * (h - 16) * (w - 16), num_classes))]
    return nn.Sequential(OrderedDict(layers))


def cnn2(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: Size = 28) -> nn.Sequential:
    """A shallow but stronger CNN ("CNN2"; the paper's CNN2 is not published, this is ours).

    Three stages of two ``3×3`` convs (padding 1, no bias) + BatchNorm + ReLU, with widths
    ``round(16·width)``, ``round(32·width)``, ``round(64·width)``; a 2×2 max-pool after each of the
    first two stages (28→14→7, so most convs run at low resolution: fast on CPU); global average
    pool; ``Linear(round(64·width), num_classes)``. 72,666 parameters at width 1 on one input
    channel, about 10× cnn1, with BatchNorm and pooling that cnn1 lacks. Works for any input of
    at least 4×4. Layers are named ``conv1..conv6``, ``bn1..bn6``, ``relu1..relu6``, ``pool1``,
    ``pool2``, ``gap``, ``flatten``, ``fc``.

    Example:
        >>> m = cnn2()
        >>> m(torch.zeros(2, 1, 28, 28)).shape, sum(p.numel() for p in m.parameters())
        (torch.Size([2, 10]), 72666)
    """
    h, w = _hw(input_size)
    if min(h, w) < 4:
        raise ValueError(f"cnn2 needs inputs of at least 4x4 (two 2x2 max-pools), got {h}x{w}")
    widths = [_channels(b, width) for b in (16, 32, 64)]
    layers: list[tuple[str, nn.Module]] = []
    c_in, k = in_channels, 0
    for stage, c in enumerate(widths):
        for _ in range(2):
            k += 1
            layers += [
                (f"conv{k}", nn.Conv2d(c_in, c, 3, padding=1, bias=False)),
                (f"bn{k}", nn.BatchNorm2d(c)),
                (f"relu{k}", nn.ReLU()),
            ]
            c_in = c
        if stage < 2:
            layers.append((f"pool{stage + 1}", nn.MaxPool2d(2)))
    layers += [("gap", nn.AdaptiveAvgPool2d(1)), ("flatten", nn.Flatten()), ("fc", nn.Linear(c_in, num_classes))]
    return nn.Sequential(OrderedDict(layers))


class BasicBlock(nn.Module):
    """ResNet basic block: ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.

    3×3 convs without bias; the shortcut is the identity, or a 1×1 conv (stride ``stride``, no
    bias) + BatchNorm when the stride or the channel count changes.
    """

    def __init__(self, in_planes: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        self.relu2 = nn.ReLU()  # separate modules so hooks see each activation once

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet: 3×3 stem (stride 1, no max-pool), four stages, average pool, Linear."""

    # the four stages, registered by name with add_module in __init__
    layer1: nn.Sequential
    layer2: nn.Sequential
    layer3: nn.Sequential
    layer4: nn.Sequential

    def __init__(self, blocks: tuple[int, ...], in_channels: int, num_classes: int, width: float):
        super().__init__()
        planes = [_channels(64, width) * m for m in (1, 2, 4, 8)]
        self.conv1 = nn.Conv2d(in_channels, planes[0], 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes[0])
        self.relu = nn.ReLU()
        in_planes = planes[0]
        for i, (n, p, s) in enumerate(zip(blocks, planes, (1, 2, 2, 2), strict=True)):
            stage = []
            for j in range(n):
                stage.append(BasicBlock(in_planes, p, s if j == 0 else 1))
                in_planes = p
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
        # Adaptive pooling: the released code's 4x4 average pool on 32x32 inputs, any size here.
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(in_channels: int = 3, num_classes: int = 10, width: float = 1.0, input_size: Size = 32) -> ResNet:
    """ResNet18, CIFAR variant (as in the CS authors' CIFAR-10 code), returning logits.

    Stem ``Conv2d(in, w, 3, stride 1, pad 1, no bias)`` + BN + ReLU (no max-pool); BasicBlock
    stages [2, 2, 2, 2] with widths ``w·(1, 2, 4, 8)``, ``w = round(64·width)``, first-block
    strides 1/2/2/2 and 1×1 conv + BN shortcuts where the shape changes; adaptive average pool;
    ``Linear(8w, num_classes)``. 20 Conv2d layers; 11,173,962 parameters at width 1 with 3 input
    channels and 10 classes. Any input size works (``input_size`` is only checked).

    Example:
        >>> m = resnet18(width=0.125)
        >>> m(torch.zeros(2, 3, 32, 32)).shape
        torch.Size([2, 10])
    """
    _hw(input_size)
    return ResNet((2, 2, 2, 2), in_channels, num_classes, width)


def _quarter(input_size: Size, model: str) -> tuple[int, int]:
    """(H/4, W/4): the generative models up- and down-sample twice by 2."""
    h, w = _hw(input_size)
    if h % 4 or w % 4:
        raise ValueError(f"{model} needs an input size divisible by 4 (two stride-2 layers), got {h}x{w}")
    return h // 4, w // 4


def _up(c_in: int, c_out: int) -> nn.ConvTranspose2d:
    """The DCGAN up-sampling layer: 4x4 transposed conv, stride 2, padding 1 (doubles H and W)."""
    return nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1)


def _down(c_in: int, c_out: int) -> nn.Conv2d:
    """The DCGAN down-sampling layer: 4x4 conv, stride 2, padding 1 (halves H and W)."""
    return nn.Conv2d(c_in, c_out, 4, stride=2, padding=1)


class VAE(nn.Module):
    """Convolutional VAE with a Bernoulli decoder, for images in [0, 1].

    Encoder: ``_down(C, c)``, ReLU, ``_down(c, 2c)``, ReLU, ``Conv2d(2c, 2·latent, (H/4, W/4))``
    giving the posterior mean and log-variance. Decoder (``decoder``), transposed convs only:
    ``ConvTranspose2d(latent, 2c, (H/4, W/4))`` from the 1×1 code, ReLU, ``_up(2c, c)``, ReLU,
    ``_up(c, C)`` giving pixel logits. ``c = round(16·width)``.

    ``forward(x)`` returns ``(logits, mu, logvar)`` with a reparameterised sample;
    :meth:`nelbo` is the negative ELBO in nats per image,
    ``−E_q[log p(x|z)] + KL(q(z|x) ‖ N(0, I))``, with the Bernoulli log-likelihood summed over pixels;
    :meth:`decode` maps codes (N, latent) to images in [0, 1].
    """

    def __init__(self, in_channels: int, width: float, input_size: Size, latent_dim: int = 16):
        super().__init__()
        q = _quarter(input_size, "vae")
        c = _channels(16, width)
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(
            _down(in_channels, c), nn.ReLU(), _down(c, 2 * c), nn.ReLU(), nn.Conv2d(2 * c, 2 * latent_dim, q)
        )
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 2 * c, q), nn.ReLU(), _up(2 * c, c), nn.ReLU(), _up(c, in_channels)
        )

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and log-variance, each (N, latent)."""
        mu, logvar = self.encoder(x).flatten(1).chunk(2, dim=1)
        return mu, logvar

    def decode_logits(self, z: torch.Tensor) -> torch.Tensor:
        """Pixel logits (N, C, H, W) for codes (N, latent)."""
        return self.decoder(z[:, :, None, None])

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] (the Bernoulli means) for codes (N, latent)."""
        return torch.sigmoid(self.decode_logits(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        return self.decode_logits(z), mu, logvar

    def nelbo(self, x: torch.Tensor) -> torch.Tensor:
        """Negative ELBO per image (N,), in nats; one reparameterised sample of z per image."""
        return vae_nelbo(x, *self(x))


def vae_nelbo(x: torch.Tensor, logits: torch.Tensor, mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Negative ELBO per image (N,) from a :class:`VAE`'s outputs on ``x``: the Bernoulli negative
    log-likelihood summed over pixels plus KL(N(mu, exp(logvar)) ‖ N(0, I)), in nats."""
    recon = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none").flatten(1).sum(1)
    kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)
    return recon + kl


class DCGAN(nn.Module):
    """A DCGAN for small images in [0, 1]: ``generator`` and ``discriminator`` in one module.

    Generator (transposed convs, BatchNorm and ReLU between them, as in DCGAN):
    ``ConvTranspose2d(latent, 2c, (H/4, W/4))`` from the 1×1 code, ``_up(2c, c)``, ``_up(c, C)``,
    sigmoid. Discriminator: ``_down(C, c)``, LeakyReLU(0.2), ``_down(c, 2c)``, BatchNorm,
    LeakyReLU(0.2), ``Conv2d(2c, 1, (H/4, W/4))`` giving one logit per image. ``c = round(32·width)``.
    Weights start from N(0, 0.02) (BatchNorm scales from N(1, 0.02)), DCGAN's initialisation.
    ``forward(z)`` generates images from codes (N, latent).
    """

    def __init__(self, in_channels: int, width: float, input_size: Size, latent_dim: int = 32):
        super().__init__()
        q = _quarter(input_size, "dcgan")
        c = _channels(32, width)
        self.latent_dim = latent_dim
        self.generator = nn.Sequential(
            nn.ConvTranspose2d(latent_dim, 2 * c, q, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.ReLU(),
            nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(c),
            nn.ReLU(),
            _up(c, in_channels),
            nn.Sigmoid(),
        )
        self.discriminator = nn.Sequential(
            _down(in_channels, c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(c, 2 * c, 4, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(2 * c),
            nn.LeakyReLU(0.2),
            nn.Conv2d(2 * c, 1, q),
            nn.Flatten(0),
        )
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.normal_(m.weight, 0.0, 0.02)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 1.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.generator(z[:, :, None, None])


def vae(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: Size = 28) -> VAE:
    """The convolutional :class:`VAE` (``num_classes`` is ignored: it has no classifier head).

    Example:
        >>> m = vae()
        >>> m.nelbo(torch.full((2, 1, 28, 28), 0.5)).shape, m.decode(torch.zeros(3, 16)).shape
        (torch.Size([2]), torch.Size([3, 1, 28, 28]))
    """
    return VAE(in_channels, width, input_size)


def dcgan(in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: Size = 28) -> DCGAN:
    """The :class:`DCGAN` (``num_classes`` is ignored: the discriminator gives one logit).

    Example:
        >>> m = dcgan()
        >>> images = m(torch.zeros(3, 32))
        >>> images.shape, m.discriminator(images).shape
        (torch.Size([3, 1, 28, 28]), torch.Size([3]))
    """
    return DCGAN(in_channels, width, input_size)


_BUILDERS = {"cnn1": cnn1, "cnn2": cnn2, "resnet18": resnet18, "vae": vae, "dcgan": dcgan}


def build(
    name: str, *, in_channels: int = 1, num_classes: int = 10, width: float = 1.0, input_size: Size = 28
) -> nn.Module:
    """Build one of ``MODELS``: the classifiers ``"cnn1"``, ``"cnn2"``, ``"resnet18"`` (logits) or
    the generative ``"vae"`` and ``"dcgan"`` (see :class:`VAE` and :class:`DCGAN`).

    Args:
        name: the model.
        in_channels: input channels (1 for Fashion-MNIST/MNIST/digits, 3 for CIFAR-10).
        num_classes: outputs of the final Linear.
        width: multiplies every hidden channel count (rounded; each must stay >= 1).
        input_size: H (= W) or (H, W) of the inputs. cnn1's Linear depends on it (>= 17);
            cnn2 needs >= 4; resnet18 takes any size; vae and dcgan need sides divisible by 4.

    Raises:
        ValueError: unknown name (the message lists ``MODELS``), non-positive or non-finite width,
            channels or classes < 1, or an input too small for the model.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> model = build("cnn2", in_channels=3, width=0.5, input_size=32)
        >>> model(torch.zeros(4, 3, 32, 32)).shape
        torch.Size([4, 10])
        >>> _ = torch.manual_seed(0)  # the same seed gives the same weights
        >>> again = build("cnn2", in_channels=3, width=0.5, input_size=32)
        >>> all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters(), strict=True))
        True
    """
    if not isinstance(name, str) or name.lower() not in _BUILDERS:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODELS)}")
    for label, v in (("in_channels", in_channels), ("num_classes", num_classes)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{label} must be a positive int, got {v!r}")
    if not isinstance(width, (int, float)) or isinstance(width, bool) or not math.isfinite(width) or width <= 0:
        raise ValueError(f"width must be a positive finite number, got {width!r}")
    return _BUILDERS[name.lower()](in_channels, num_classes, float(width), input_size)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of scalar parameters of ``model`` (only those with ``requires_grad`` if asked).

    Example:
        >>> count_parameters(build("cnn1"))
        7086
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
