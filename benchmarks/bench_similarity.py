"""Benchmark of the CS core: forward+backward time per ResNet18 conv shape.

Compares ``convsim.similarity.conv_similarity`` (all pairs and adjacent pairs, per channel) with a
plain ``torch.fft.rfft2`` + autograd implementation of the same all-pairs loss (half-spectrum
column weights of spec §6.4). What the whole regulariser costs inside a training step is
``bench_cs_step.py``'s business.
Timings are medians over repeats after warm-up; the methods are interleaved within every repeat so
that load from other processes hits them alike.

    python benchmarks/bench_similarity.py            # full run, writes benchmarks/results/similarity.md
    python benchmarks/bench_similarity.py --quick    # short run, prints only
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine_load import load_line, machine_state
from torch import nn

from convsim._internal.files import atomic_write_text
from convsim.similarity import conv_similarity
from convsim.training.summary import machine as host

RESULTS = Path(__file__).parent / "results" / "similarity.md"


def rfft2_baseline(weight: torch.Tensor) -> torch.Tensor:
    r"""All-pairs per-channel CS of a (M, C, k1, k2) weight with ``rfft2`` and plain autograd.

    :math:`\frac1{2Q}\sum_\omega\sum_c[(\sum_i S_{ic})^2 - \sum_i S_{ic}^2]` over the full spectrum,
    rebuilt from the half spectrum with column weights 1 (DC, and Nyquist for even sizes) and 2.
    """
    k1, k2 = weight.shape[-2:]
    p1, p2 = 2 * k1 - 1, 2 * k2 - 1
    spec = torch.fft.rfft2(weight, s=(p1, p2))
    power = spec.real.square() + spec.imag.square()  # (M, C, P1, P2//2 + 1)
    cols = torch.full((p2 // 2 + 1,), 2.0, dtype=weight.dtype, device=weight.device)
    cols[0] = 1.0
    if p2 % 2 == 0:
        cols[-1] = 1.0
    pair_sum = power.sum(0).square() - power.square().sum(0)
    return (pair_sum * cols).sum() / (2 * p1 * p2)


# --------------------------------------------------------------------------- ResNet18 (CIFAR variant)


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class _ResNet18(nn.Module):
    """Minimal CIFAR ResNet18 (spec §12.2): 20 bias-free Conv2d layers, ≈11.17 M parameters."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        layers, cin = [], 64
        for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
            layers += [_Block(cin, cout, stride), _Block(cout, cout, 1)]
            cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x):
        out = self.layers(torch.relu(self.bn1(self.conv1(x))))
        return self.fc(torch.flatten(nn.functional.avg_pool2d(out, 4), 1))


def resnet18() -> tuple[nn.Module, str]:
    try:  # the project's model once it exists; the local copy otherwise
        from convsim.models import build

        return build("resnet18", in_channels=3), "convsim.models.build('resnet18')"
    except (ImportError, AttributeError, KeyError, ValueError):
        return _ResNet18(), "minimal CIFAR ResNet18 in this script"


def resnet18_conv_shapes() -> list[tuple[int, ...]]:
    """Weight shapes of the 20 convs of the CIFAR ResNet18, in order."""
    shapes, cin = [(64, 3, 3, 3)], 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        shapes += [(cout, cin, 3, 3), (cout, cout, 3, 3)]
        if stride != 1 or cin != cout:
            shapes.append((cout, cin, 1, 1))
        shapes += [(cout, cout, 3, 3), (cout, cout, 3, 3)]
        cin = cout
    return shapes


# --------------------------------------------------------------------------- timing


def median_times(fns: dict[str, Callable[[], None]], repeats: int, warmup: int = 2) -> dict[str, float]:
    """Median wall time in seconds of every callable; the callables take turns within each repeat."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(ts) for name, ts in times.items()}


def fwd_bwd(loss_fn: Callable[[torch.Tensor], torch.Tensor], weight: torch.Tensor) -> Callable[[], None]:
    def run():
        weight.grad = None
        loss_fn(weight).backward()

    return run


def layer_table(repeats: int, quick: bool) -> tuple[list[str], dict]:
    shapes = sorted(set(resnet18_conv_shapes()), key=lambda s: (s[0], s[1], -s[2]))
    if quick:
        shapes = [s for s in shapes if s[0] in (64, 512)]
    rows = [
        "| weight shape (M, C, k, k) | convsim all pairs | rfft2 + autograd | speed-up "
        "| convsim adjacent | all / adjacent |",
        "|---|---|---|---|---|---|",
    ]
    gen = torch.Generator().manual_seed(0)
    speedups = {}
    for shape in shapes:
        w = torch.randn(shape, generator=gen).requires_grad_()
        t = median_times(
            {
                "all": fwd_bwd(conv_similarity, w),
                "rfft2": fwd_bwd(rfft2_baseline, w),
                "adjacent": fwd_bwd(lambda x: conv_similarity(x, pairs="adjacent"), w),
            },
            repeats,
        )
        rows.append(
            f"| {shape} | {t['all'] * 1e3:.2f} ms | {t['rfft2'] * 1e3:.2f} ms | {t['rfft2'] / t['all']:.1f}× "
            f"| {t['adjacent'] * 1e3:.2f} ms | {t['all'] / t['adjacent']:.2f} |"
        )
        speedups[shape] = t["rfft2"] / t["all"]
        print(rows[-1], flush=True)
    return rows, speedups


def machine() -> str:
    name = host()["cpu"]
    return (
        f"{name}; {torch.get_num_threads()} torch threads; torch {torch.__version__}; "
        f"Python {platform.python_version()}"
    )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer shapes and repeats; no file written")
    parser.add_argument("--repeats", type=int, default=None, help="timed repeats per method (default 9, quick 5)")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown output (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.repeats is not None and args.repeats < 1:
        parser.error("--repeats must be >= 1")
    torch.set_num_threads(args.threads)
    repeats = args.repeats or (5 if args.quick else 9)
    print(f"machine: {machine()}", flush=True)
    before = machine_state()
    table, speedups = layer_table(repeats, args.quick)
    after = machine_state()
    big = speedups.get((512, 512, 3, 3), float("nan"))
    summary = (
        f"**Summary.** On the 512×512×3×3 weight, all-pairs per-channel CS (forward+backward) is "
        f"**{big:.1f}×** faster than the plain `rfft2` + autograd version (target: ≥ 3×). What the whole "
        "regulariser costs inside a ResNet18 training step is the headline of `bench_cs_step.py`."
    )
    print(summary)
    if args.quick:
        return 0
    text = "\n".join(
        [
            "# CS core benchmark (`benchmarks/bench_similarity.py`)",
            "",
            summary,
            "",
            f"Machine: {machine()}.",
            "",
            load_line(before, after) + " The methods take turns within every repeat, so ratios are more "
            "stable than absolute times.",
            "",
            f"Per layer: forward+backward of one float32 weight, median of {repeats} repeats after 2 warm-up calls. "
            "*convsim all pairs* = `conv_similarity(w)` (all pairs, per channel: real half-spectrum DFT "
            "matmul + closed-form backward, linear in M); *rfft2 + autograd* = the same loss with "
            "`torch.fft.rfft2` and half-spectrum column weights, differentiated by autograd "
            "(`rfft2_baseline` in the script); *convsim adjacent* = the released definition "
            '(`pairs="adjacent"`). Distinct conv shapes of the CIFAR ResNet18.',
            "",
            *table,
            "",
        ]
    )
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
