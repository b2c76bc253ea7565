"""`convsim verify`: the theory checks as tables (identity per padding, counterexample, toy).

Exits non-zero when an exact relation fails: the identity with full or circular padding, or the
shifted-delta counterexample, off by more than ``TOLERANCE`` (relative, float64).
"""

from __future__ import annotations

import argparse
import time

import torch

from convsim import theory
from convsim._internal.files import atomic_write_json
from convsim.cli.arguments import COUNT, integer_at_least

TOLERANCE = 1e-8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--seeds", type=COUNT, default=20, help="seeds of the toy comparison (default 20)")
    parser.add_argument(
        "--steps", type=integer_at_least(0), default=300, help="SGD steps of each toy optimisation (default 300)"
    )
    parser.add_argument("--seed", type=int, default=0, help="first seed (inputs and toy kernels)")
    parser.add_argument("--json", metavar="PATH", help="also write every number to this JSON file")


def table(headers: list[str], rows: list[list[str]]) -> str:
    """A markdown table with columns padded to equal width (readable as plain text too)."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), rule] + [line(r) for r in rows])


def identity_checks(seed: int = 0) -> list[dict]:
    """Relative error of the identity per padding, 1-D (spec §3.3 setting) and 2-D multi-channel.

    Then the stride-2 rows of issue 10, full padding only (both exact): a forward conv (polyphase
    correlations) and a transposed conv (the input's correlations on the lattice 2Z), 4x4 kernels
    as in DCGAN. Every row has ``stride`` and ``transposed``.
    """
    g = torch.Generator().manual_seed(seed)
    f64 = torch.float64
    settings = [
        (
            "1-D  C=1  L=64     k=9   M=2",
            torch.rand(1, 64, generator=g, dtype=f64),
            torch.rand(2, 1, 9, generator=g, dtype=f64),
        ),
        (
            "2-D  C=3  20x20    k=3x3 M=4",
            torch.randn(3, 20, 20, generator=g, dtype=f64),
            torch.randn(4, 3, 3, 3, generator=g, dtype=f64),
        ),
        (
            "2-D  N=4 C=3 12x12 k=5x5 M=6",
            torch.randn(4, 3, 12, 12, generator=g, dtype=f64),
            torch.randn(6, 3, 5, 5, generator=g, dtype=f64),
        ),
    ]
    out = []
    for label, x, w in settings:
        for padding in theory.PADDINGS:
            exact = padding in ("full", "circular")
            err = theory.identity_error(x, w, padding).item()
            out.append(
                {
                    "setting": label,
                    "padding": padding,
                    "stride": 1,
                    "transposed": False,
                    "exact": exact,
                    "rel_error": err,
                    "ok": (err <= TOLERANCE) if exact else True,
                }
            )
    strided = [
        (
            "2-D  C=3  20x20    k=4x4 M=4 stride 2",
            False,
            torch.randn(2, 3, 20, 20, generator=g, dtype=f64),
            torch.randn(4, 3, 4, 4, generator=g, dtype=f64),
        ),
        (
            "2-D  C=3  7x7      k=4x4 M=4 stride 2 transposed",
            True,
            torch.randn(2, 3, 7, 7, generator=g, dtype=f64),
            torch.randn(3, 4, 4, 4, generator=g, dtype=f64),
        ),
    ]
    for label, transposed, x, w in strided:
        err = theory.identity_error(x, w, "full", stride=2, transposed=transposed).item()
        out.append(
            {
                "setting": label,
                "padding": "full",
                "stride": 2,
                "transposed": transposed,
                "exact": True,
                "rel_error": err,
                "ok": err <= TOLERANCE,
            }
        )
    return out


def counterexample_check(seed: int = 0, length: int = 256, box: int = 8) -> dict:
    """Shifted deltas on a smooth input: kernel inner product 0, cos(F1, F2) = R[1]/R[0]."""
    x = theory.smooth_signal(length, box, generator=torch.Generator().manual_seed(seed))
    res = {k: v.item() for k, v in theory.shifted_delta_counterexample(x).items()}
    res["abs_difference"] = abs(res["fm_cosine"] - res["autocorr_ratio"])
    close = res["abs_difference"] <= TOLERANCE * abs(res["autocorr_ratio"])
    res["ok"] = res["kernel_inner_product"] == 0.0 and close
    res.update(length=length, box=box)
    return res


def _fmt(v: float) -> str:
    return f"{v:.3f}" if abs(v) >= 5e-4 or v == 0 else f"{v:.1e}"


def run(args: argparse.Namespace) -> int:
    # Every op here is tiny: intra-op threads only add synchronisation, which on a busy machine
    # made the toy 10-40x slower. Restored afterwards (run() may be called in-process).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run(args)
    finally:
        torch.set_num_threads(threads)


def _run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    print("# convsim verify (float64)\n")
    ident = _print_identity(args.seed)
    ce = _print_counterexample(args.seed)
    toy = _print_toy(args)
    passed = all(r["ok"] for r in ident) and ce["ok"]
    elapsed = time.perf_counter() - start
    print(f"\n{'PASS' if passed else 'FAIL'}: exact relations hold to {TOLERANCE:g} ({elapsed:.1f} s)")
    if args.json:
        record = {
            "identity": ident,
            "counterexample": ce,
            "toy": toy,
            "passed": passed,
            "tolerance": TOLERANCE,
            "seconds": elapsed,
        }
        atomic_write_json(args.json, record)
    return 0 if passed else 1


def _print_identity(seed: int) -> list[dict]:
    ident = identity_checks(seed)
    print("## 1. Identity <F_i, F_j> = sum_cd <K_ic (x) K_jd, R_cd on the lag window>\n")
    print("Relative Frobenius error of the (M, M) Gram of the bias-free maps against the prediction")
    print("from kernel and input correlations (circular R for circular padding, linear R otherwise).")
    print("Stride 2, full padding: polyphase correlations (forward), R on the lattice 2Z (transposed).\n")
    rows = [
        [
            r["setting"],
            r["padding"],
            f"{r['rel_error']:.1e}",
            ("exact: ok" if r["ok"] else "exact: FAIL") if r["exact"] else "approximate (boundary terms)",
        ]
        for r in ident
    ]
    print(table(["setting", "padding", "relative error", "status"], rows))
    return ident


def _print_counterexample(seed: int) -> dict:
    ce = counterexample_check(seed)
    print(
        "\n## 2. Shifted-delta counterexample "
        f"(smooth input: Gaussian noise * box {ce['box']}, length {ce['length']})\n"
    )
    print("K1 = (1,0,0), K2 = (0,1,0): orthogonal kernels, yet with full padding the maps are the input")
    print("and its one-sample shift, so cos(F1, F2) = R_X[1] / R_X[0] exactly.\n")
    print(
        table(
            ["quantity", "value"],
            [
                ["<K1, K2>", f"{ce['kernel_inner_product']:.3g}"],
                ["cos(F1, F2)", f"{ce['fm_cosine']:.6f}"],
                ["R_X[1] / R_X[0]", f"{ce['autocorr_ratio']:.6f}"],
                ["|difference|", f"{ce['abs_difference']:.1e} ({'ok' if ce['ok'] else 'FAIL'})"],
            ],
        )
    )
    return ce


def _print_toy(args: argparse.Namespace) -> dict:
    toy = theory.toy_comparison(seeds=args.seeds, steps=args.steps, seed=args.seed)
    c = toy["config"]
    print(
        f"\n## 3. Kernel orthogonality vs CS, two 1-D kernels U[0,1)^{c['kernel_size']} "
        f"(means over {c['seeds']} seeds, {c['steps']} SGD steps)\n"
    )
    print(
        f"orthogonality: minimise cos(K1,K2)^2, lr {c['ortho_lr']}; CS: minimise CS(K1,K2), lr {c['cs_lr']}; "
        f"valid maps of length {c['length'] - c['kernel_size'] + 1}.\n"
    )
    rows = [
        [
            r["input"],
            r["objective"],
            f"{_fmt(r['kernel_cos_before'])} -> {_fmt(r['kernel_cos_after'])}",
            f"{_fmt(r['fm_abs_cos_before'])} -> {_fmt(r['fm_abs_cos_after'])}",
            _fmt(r["fm_abs_cos_after_median"]),
            _fmt(r["fm_cos_relu_after"]),
            " -> ".join(
                "(" + ", ".join(f"{v:.2f}" for v in r[k]) + ")" for k in ("kernel_norms_before", "kernel_norms_after")
            ),
        ]
        for r in toy["rows"]
    ]
    print(
        table(
            [
                "input",
                "objective",
                "kernel cos",
                "fmap |cos|",
                "median fmap |cos| after",
                "fmap cos after ReLU",
                "kernel norms",
            ],
            rows,
        )
    )

    return toy
