"""Training speed on CPU: images/s per model and memory format / precision, and each regulariser's
share of a training step.

    python benchmarks/bench_training.py                 # writes benchmarks/results/training.md
    python benchmarks/bench_training.py --quick         # fewer steps, for a smoke check

Every measured step is the trainer's own :func:`convsim.training.loop.train_step` (forward, cross-entropy,
regulariser, backward, SGD-momentum step) on a batch indexed from an in-memory tensor, exactly as
``convsim train`` runs it. Inputs are N(0, 1) tensors of Fashion-MNIST shape (1×28×28); the
throughput does not depend on the pixel values.

Timing: ``--repeats`` rounds; in each round every configuration runs ``--warmup`` steps and then
``--steps`` timed steps, configurations interleaved round-robin so that a change in machine load
hits all of them alike; the table reports the fastest round (on a shared machine the minimum is
the estimate least disturbed by other jobs). A regulariser's share of a step is
``(t_with − t_none) / t_with`` from those medians (it can come out slightly negative when the
overhead is below the noise).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from machine_load import load_line, machine_state
from torch import nn

from convsim import models
from convsim._internal.files import atomic_write_text
from convsim.penalties import Penalty
from convsim.similarity import ConvSimilarity
from convsim.training.distributed import physical_cores
from convsim.training.loop import train_step
from convsim.training.summary import machine

MODELS = [("cnn1", 1.0), ("cnn2", 1.0), ("resnet18", 0.25)]
FORMATS = [
    ("fp32, NCHW", False, False),
    ("fp32, channels_last", True, False),
    ("bf16 autocast, NCHW", False, True),
    ("bf16 autocast, channels_last", True, True),
]
REGULARISERS = [
    "none",
    "cs (all pairs, per channel)",
    "cs (adjacent, per channel)",
    "so",
    "dso",
    "mc",
    "srip",
    "ocnn",
    "decov",
]


def make_regulariser(name: str, model: nn.Module):
    if name == "none":
        return []
    if name.startswith("cs"):
        return [ConvSimilarity(model, beta=1e-3, pairs="adjacent" if "adjacent" in name else "all")]
    return [Penalty(model, name, beta=1e-3, **({"check": "off"} if name == "ocnn" else {}))]


class Case:
    """One configuration: a model, its optimizer, regularisers and data, ready to step."""

    def __init__(self, model_name: str, width: float, channels_last: bool, bf16: bool, reg: str, batch: int, pool: int):
        torch.manual_seed(0)
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.model = models.build(model_name, in_channels=1, num_classes=10, width=width, input_size=28)
        self.model = self.model.to(memory_format=fmt)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.regs = make_regulariser(reg, self.model)
        self.x = torch.randn(pool, 1, 28, 28).contiguous(memory_format=fmt)
        self.y = torch.randint(0, 10, (pool,))
        self.fmt, self.batch, self.bf16 = fmt, batch, bf16
        self.gen = torch.Generator().manual_seed(0)

    def autocast(self):
        if self.bf16:
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return torch.autocast("cpu", enabled=False)

    def run(self, steps: int) -> float:
        """Seconds for ``steps`` training steps."""
        self.model.train()
        t0 = time.perf_counter()
        for _ in range(steps):
            idx = torch.randint(0, len(self.y), (self.batch,), generator=self.gen)
            train_step(
                self.model,
                self.x[idx].contiguous(memory_format=self.fmt),
                self.y[idx],
                self.optimizer,
                self.regs,
                None,
                self.autocast,
            )
        return time.perf_counter() - t0


def measure(cases: dict, args) -> dict:
    """Fastest round's seconds per step of every case (round-robin rounds)."""
    rounds = {key: [] for key in cases}
    for _ in range(args.repeats):
        for key, case in cases.items():
            case.run(args.warmup)
            rounds[key].append(case.run(args.steps) / args.steps)
    return {key: min(v) for key, v in rounds.items()}


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    wanted = ["avx2", "avx512f", "avx512_bf16", "amx_bf16"]
    return ", ".join(f for f in wanted if f in flags) or "none of avx2/avx512/bf16"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="0 = physical cores")
    p.add_argument("--quick", action="store_true", help="2 steps, 1 warm-up, 1 round; prints only, no file written")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "training.md"))
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.warmup, args.repeats = 2, 1, 1
    threads = args.threads or physical_cores()
    torch.set_num_threads(threads)
    before = machine_state()
    t_start = time.perf_counter()

    # 1. Throughput per model and memory format / precision (no regulariser).
    speed = {}
    for name, width in MODELS:
        cases = {label: Case(name, width, cl, bf, "none", args.batch, 4 * args.batch) for label, cl, bf in FORMATS}
        for label, sec in measure(cases, args).items():
            speed[(name, width, label)] = sec
            print(f"{name} w{width} {label}: {args.batch / sec:.0f} img/s", file=sys.stderr)

    # 2. Regulariser share of a step (fp32, channels_last: the recommended CPU setting).
    share = {}
    for name, width in MODELS:
        cases = {reg: Case(name, width, True, False, reg, args.batch, 4 * args.batch) for reg in REGULARISERS}
        for reg, sec in measure(cases, args).items():
            share[(name, width, reg)] = sec
            print(f"{name} w{width} {reg}: {1e3 * sec:.1f} ms/step", file=sys.stderr)
    after = machine_state()

    lines = [
        "# Training speed on CPU",
        "",
        "Produced by `python benchmarks/bench_training.py` (do not edit by hand).",
        "",
        "## Machine",
        "",
        f"- CPU: {machine()['cpu']} ({physical_cores()} physical cores usable; flags: {cpu_flags()})",
        f"- torch {torch.__version__}, {threads} threads, Python {platform.python_version()}",
        f"- {load_line(before, after)} Total {time.perf_counter() - t_start:.0f} s.",
        "- On an oversubscribed CPU prefer `--threads 1` (and `convsim train --threads 1`): with several "
        "OpenMP threads on busy cores every small parallel op waits for a descheduled sibling.",
        "",
        f"Setting: batch {args.batch}, SGD momentum 0.9, cross-entropy, 1×28×28 inputs (Fashion-MNIST shape); "
        f"fastest of {args.repeats} round(s) of {args.steps} steps after {args.warmup} warm-up steps.",
        "",
        "## Throughput (images/s, training steps)",
        "",
        "| model | params | " + " | ".join(label for label, _, _ in FORMATS) + " | s per 60k-image epoch (best) |",
        "|---|---:|" + "---:|" * (len(FORMATS) + 1),
    ]
    for name, width in MODELS:
        n = models.count_parameters(models.build(name, width=width))
        rates = [args.batch / speed[(name, width, label)] for label, _, _ in FORMATS]
        cells = [f"{r:.0f}" for r in rates] + [f"{60000 / max(rates):.0f}"]
        lines.append(f"| {name} (width {width}) | {n:,} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Regulariser share of a training step (fp32, channels_last)",
        "",
        "Each cell: ms per step with the regulariser, and in brackets its share "
        "`(t_with − t_none) / t_with`. CS is unnormalised per-channel CS (all pairs via the FFT route, or "
        "adjacent pairs); penalties as in `convsim.penalties` (OCNN with stride-aware full padding). "
        "On a shared CPU, shares within about ±30% (negative ones included) are noise.",
        "",
        "| regulariser | " + " | ".join(f"{n} (w{w})" for n, w in MODELS) + " |",
        "|---|" + "---:|" * len(MODELS),
    ]
    for reg in REGULARISERS:
        cells = []
        for name, width in MODELS:
            t, t0 = share[(name, width, reg)], share[(name, width, "none")]
            cells.append(f"{1e3 * t:.1f}" if reg == "none" else f"{1e3 * t:.1f} ({100 * (t - t0) / t:+.0f}%)")
        lines.append(f"| {reg} | " + " | ".join(cells) + " |")
    lines.append("")
    if args.quick:
        print("\n".join(lines))
        return 0
    atomic_write_text(args.out, "\n".join(lines))
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
