"""CS inside a real training step (issue 13): ResNet18 steps with the regulariser against steps without.

    python benchmarks/bench_cs_step.py            # full run (61 + 9 pairs): benchmarks/results/cs_step.{md,json}
    python benchmarks/bench_cs_step.py --quick    # 3 pairs at batch 32, prints only: a smoke check
    python benchmarks/collect.py                  # then splices every results/*.md into BENCHMARKS.md

What a user pays is the step with CS against the step without, so that is the headline: the CIFAR
ResNet18 (``convsim.models.build("resnet18", in_channels=3, input_size=32)``, 20 convs), batch 128
of 3×32×32, cross-entropy, SGD with momentum 0.9, ``ConvSimilarity(model, beta=1e-3)`` with its
defaults (all pairs, per channel). One process runs rounds; in each round every step configuration is
timed right next to a step without CS, in an order that alternates from round to round, so slow
drifts in the machine's speed hit both alike, and the pair's ratio is the step with CS over the
step without. The headline (CS added to the loss) gets many rounds of its own, since its median
decides the issue's target; the other configurations fewer. The table gives medians over the
rounds (pairs) with their distribution-free 95 % intervals, after warm-up rounds that are not
timed (they also load numba's cached machine code). How busy the machine is gets measured before
and after the run: the share of CPU time other processes used over a few seconds (from
``/proc/stat``), beside the load average, which lags by minutes.

Configurations: without CS; CS added to the loss (what ``convsim train`` does); CS as its own
``reg().backward()`` after the task's backward (the other placement); CS added to the loss on the
torch path (compiled kernels switched off, as without numba or on GPUs); and the regulariser alone,
forward and backward, both ways. With a CUDA device the same rounds also run there (torch path).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from machine_load import load_line, machine_state
from torch import nn

from convsim import models
from convsim._internal.compiled import compiled_kernels
from convsim._internal.files import atomic_write_text
from convsim.similarity import ConvSimilarity
from convsim.training.distributed import physical_cores
from convsim.training.summary import machine

RESULTS = Path(__file__).parent / "results" / "cs_step.md"
TARGET = 1.05  # issue 13: median step ratio at most 1.05


class Bench:
    """ResNet18, its optimizer, its CS regulariser and one batch on a device: every configuration's step."""

    def __init__(self, batch: int, device: torch.device):
        torch.manual_seed(0)
        self.model = models.build("resnet18", in_channels=3, num_classes=10, input_size=32).to(device)
        self.model.train()
        self.opt = torch.optim.SGD(self.model.parameters(), lr=1e-3, momentum=0.9)
        self.reg = ConvSimilarity(self.model, beta=1e-3)
        gen = torch.Generator().manual_seed(0)
        self.x = torch.randn(batch, 3, 32, 32, generator=gen).to(device)
        self.y = torch.randint(0, 10, (batch,), generator=gen).to(device)
        self.device = device

    def task_loss(self) -> torch.Tensor:
        return nn.functional.cross_entropy(self.model(self.x), self.y)

    def step(self, placement: str) -> None:
        """One training step: ``none``, ``add`` (loss + reg()) or ``separate`` (then reg().backward())."""
        self.opt.zero_grad(set_to_none=True)
        loss = self.task_loss()
        if placement == "add":
            loss = loss + self.reg()
        loss.backward()
        if placement == "separate":
            self.reg().backward()
        self.opt.step()

    def regulariser(self) -> None:
        """The regulariser alone, forward and backward."""
        self.opt.zero_grad(set_to_none=True)
        self.reg().backward()

    def configurations(self, torch_path: bool) -> dict[str, Callable[[], None]]:
        def off(fn: Callable[[], None]) -> Callable[[], None]:
            def run() -> None:
                with compiled_kernels(False):
                    fn()

            return run

        configs = {
            "none": lambda: self.step("none"),
            "add": lambda: self.step("add"),
            "separate": lambda: self.step("separate"),
            "reg": self.regulariser,
        }
        if torch_path:
            configs |= {"add, torch path": off(lambda: self.step("add")), "reg, torch path": off(self.regulariser)}
        return configs

    def timed(self, fn: Callable[[], None]) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        start = time.perf_counter()
        fn()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - start


def rounds(bench: Bench, configs: dict[str, Callable[[], None]], pairs: int, warmup: int) -> dict[str, list[float]]:
    """Seconds of every configuration in each of ``pairs`` timed rounds.

    A step configuration is timed next to its own step without CS (key ``"none <name>"``), in an order
    that alternates from round to round, so that each ratio comes from two adjacent steps; the
    regulariser alone (``reg`` configurations) has no pair.
    """
    for _ in range(warmup):
        for fn in configs.values():
            fn()
    times: dict[str, list[float]] = {}
    for r in range(pairs):
        for name, fn in configs.items():
            if name == "none":
                continue
            order = [(name, fn)] if name.startswith("reg") else [(name, fn), (f"none {name}", configs["none"])]
            for key, step in order if r % 2 else order[::-1]:
                times.setdefault(key, []).append(bench.timed(step))
        print(" ".join(f"{k}={v[-1] * 1e3:.0f}ms" for k, v in times.items()), file=sys.stderr, flush=True)
    times["none"] = [t for k, v in times.items() if k.startswith("none ") for t in v]
    return times


def measure(bench: Bench, pairs: int, other_pairs: int, warmup: int, torch_path: bool) -> dict[str, list[float]]:
    """The headline's rounds (without CS against CS added to the loss, ``pairs`` of them), then ``other_pairs``
    rounds of the other configurations; the steps without CS of both pooled under ``"none"``."""
    configs = bench.configurations(torch_path)
    headline = {name: configs.pop(name) for name in ("none", "add")}
    times = rounds(bench, headline, pairs, warmup)
    if other_pairs:
        others = rounds(bench, {"none": headline["none"], **configs}, other_pairs, warmup)
        times |= {**others, "none": times["none"] + others["none"]}
    return times


def pair_ratios(times: dict[str, list[float]], name: str) -> list[float]:
    """Each round's step of ``name`` over the step without CS timed next to it."""
    return [a / b for a, b in zip(times[name], times[f"none {name}"], strict=True)]


def median_interval(values: list[float], level: float = 0.95) -> tuple[float, float] | None:
    """Distribution-free interval for the median: the order statistics (k, n + 1 - k), 1-based, with k the
    largest rank such that P(Binomial(n, 1/2) < k) <= (1 - level) / 2; None when n is too small for ``level``."""
    n = len(values)
    tail = 0.0
    k = 0
    while k < n:
        tail += math.comb(n, k) / 2**n  # P(Binomial(n, 1/2) <= k)
        if tail > (1 - level) / 2:
            break
        k += 1
    if k == 0:
        return None
    ordered = sorted(values)
    return ordered[k - 1], ordered[n - k]


def ratio_row(label: str, times: dict[str, list[float]], name: str) -> str:
    ratios = pair_ratios(times, name)
    interval = median_interval(ratios)
    ci = f"{interval[0]:.3f}–{interval[1]:.3f}" if interval else "n/a (too few pairs)"
    return (
        f"| {label} | {statistics.median(times[name]) * 1e3:.0f} | {len(ratios)} | **{statistics.median(ratios):.3f}** "
        f"| {ci} | {min(ratios):.3f}–{max(ratios):.3f} |"
    )


def table(times: dict[str, list[float]]) -> list[str]:
    step = statistics.median(times["none"])
    rows = [
        "| configuration | step (ms, median) | pairs | step / step without CS (median of the pairs) "
        "| 95 % CI of that median | range over the pairs |",
        "|---|---:|---:|---:|---|---|",
        f"| without CS | {step * 1e3:.0f} | | 1 | | |",
        ratio_row("CS added to the loss (`loss + reg()`; compiled kernels)", times, "add"),
        ratio_row("CS as its own `reg().backward()` after the task's backward", times, "separate"),
    ]
    if "add, torch path" in times:
        rows.append(ratio_row("CS added to the loss, torch path (`CONVSIM_NUMBA=0`)", times, "add, torch path"))
    for name, label in (("reg", "compiled kernels"), ("reg, torch path", "torch path")):
        if name in times:
            t = statistics.median(times[name])
            share = f"{t / step:.3f} (its share)"
            n = len(times[name])
            rows.append(f"| the regulariser alone, forward + backward ({label}) | {t * 1e3:.1f} | {n} | {share} | | |")
    return rows


def versions() -> str:
    try:
        import numba

        extra = f", numba {numba.__version__}"
    except ImportError:
        extra = ", numba not installed (torch path only)"
    return f"torch {torch.__version__} (threads: {torch.get_num_threads()}), Python {platform.python_version()}{extra}"


def report(times: dict[str, list[float]], args: argparse.Namespace, loads: tuple, gpu: list[str]) -> str:
    ratio = statistics.median(pair_ratios(times, "add"))
    reg, step = statistics.median(times["reg"]), statistics.median(times["none"])
    met = "met" if ratio <= TARGET else "not met"
    return "\n".join(
        [
            "# CS inside a training step (`benchmarks/bench_cs_step.py`)",
            "",
            f"**Summary.** ResNet18, batch {args.batch}: a training step with the all-pairs CS regulariser "
            f"takes **{ratio:.3f}×** the step without it (median of {args.pairs} alternating pairs; "
            f"target ≤ {TARGET}: {met}); the regulariser alone takes {reg * 1e3:.1f} ms forward and "
            f"backward, {100 * reg / step:.1f} % of the step.",
            "",
            f"Machine: {machine()['cpu']}, {os.cpu_count()} logical CPUs; {versions()}.",
            "",
            load_line(*loads),
            "",
            "How it was measured: ResNet18 of `convsim.models.build('resnet18', in_channels=3, input_size=32)` "
            "(20 convs, all regularised), 3×32×32 inputs, cross-entropy, SGD with momentum 0.9, "
            "`ConvSimilarity(model, beta=1e-3)` (all pairs, per channel). One process; each round times one step "
            "of each configuration right next to a step without CS (which comes first alternates from round to "
            "round); a pair's ratio is its step with CS over the step without. The headline pair (CS added to "
            f"the loss) ran {args.pairs} rounds after {args.warmup} untimed warm-up rounds, then the other "
            f"configurations {args.other_pairs} rounds; the CI of a median is the distribution-free one "
            "(order statistics of the binomial). Raw times: `benchmarks/results/cs_step.json`.",
            "",
            *table(times),
            "",
            "Placement: computing `reg()` after the model's forward and adding it to the loss is what `convsim train` "
            "does; a separate `reg().backward()` after the task's backward gives the same gradients (they add "
            "up in `.grad`) and is the other row.",
            "",
            *gpu,
            "",
        ]
    )


def gpu_rows(args: argparse.Namespace) -> list[str]:
    if not torch.cuda.is_available():
        return ["No CUDA device on this machine: the GPU rows are not measured here."]
    bench = Bench(args.batch, torch.device("cuda"))
    times = measure(bench, args.pairs, args.other_pairs, args.warmup, torch_path=False)
    return [f"GPU ({torch.cuda.get_device_name()}; the torch path, the same rounds):", "", *table(times)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=61, help="rounds of the headline pair (default 61)")
    parser.add_argument("--other-pairs", type=int, default=9, help="rounds of the other configurations (default 9)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first (default 2)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: the physical cores)")
    parser.add_argument("--no-torch-path", action="store_true", help="skip the rows with compiled kernels off")
    parser.add_argument("--quick", action="store_true", help="3 pairs, 1 warm-up round, batch 32; no file written")
    parser.add_argument("--out", type=Path, default=RESULTS, help=f"markdown output (default {RESULTS})")
    args = parser.parse_args(argv)
    if args.quick:
        args.pairs, args.other_pairs, args.warmup, args.batch = 3, 3, 1, 32
    if args.pairs < 1 or args.other_pairs < 1 or args.warmup < 0 or args.batch < 1:
        parser.error("need --pairs >= 1, --other-pairs >= 1, --warmup >= 0 and --batch >= 1")
    torch.set_num_threads(args.threads or physical_cores())
    before = machine_state()
    bench = Bench(args.batch, torch.device("cpu"))
    times = measure(bench, args.pairs, args.other_pairs, args.warmup, torch_path=not args.no_torch_path)
    after = machine_state()
    text = report(times, args, (before, after), gpu_rows(args))
    print(text)
    if not args.quick:
        atomic_write_text(args.out, text)
        raw = {"args": {k: str(v) for k, v in vars(args).items()}, "load": [before, after], "seconds": times}
        atomic_write_text(args.out.with_suffix(".json"), json.dumps(raw, indent=1) + "\n")
        print(f"wrote {args.out} and its raw times; now run benchmarks/collect.py", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
