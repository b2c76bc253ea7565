"""``convsim overlap``: channel-wise NNK overlap analysis of trained runs."""

from __future__ import annotations

import argparse
from pathlib import Path

from convsim._internal.files import atomic_write_text
from convsim.cli.arguments import COUNT
from convsim.nnk.neighbors import KERNELS
from convsim.nnk.solvers import SOLVERS
from convsim.reporting.overlap import _fmt, overlap_analysis, overlap_markdown


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories of convsim train")
    parser.add_argument("--out", required=True, help="output folder: overlap.json, overlap.md, figures")
    parser.add_argument("--n-samples", type=COUNT, default=2000, help="images per run (default 2000)")
    parser.add_argument("-k", type=COUNT, default=25, help="NNK candidates per point (default 25)")
    parser.add_argument("--kernel", choices=KERNELS, default="cosine", help="kernel (default cosine)")
    parser.add_argument(
        "--solver",
        "--nnk-solver",
        dest="solver",
        choices=SOLVERS,
        default="exact",
        help="NNK solver: exact (active set, the optimum), pgd (projected gradient descent) or pruning "
        "(the authors' released one-way solver, to compare with published numbers); default exact",
    )
    parser.add_argument(
        "--pruning-tol",
        type=float,
        default=1e-6,
        help="tolerance of --solver pruning (weight floor, stop rule, near-duplicate collapse; default 1e-6)",
    )
    parser.add_argument("--split", choices=("train", "test"), default="train", help="images from (default train)")
    parser.add_argument("--layers", default=None, help="comma-separated module names (default: every conv layer)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the image subset")
    parser.add_argument("--batch-size", type=COUNT, default=256, help="forward batch size")
    parser.add_argument("--data-dir", default=None, help="dataset folder (default: each run's)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")


def run(args: argparse.Namespace) -> int:
    layers = [s for s in args.layers.split(",") if s] if args.layers else None
    result = overlap_analysis(
        args.run_dirs,
        args.out,
        n_samples=args.n_samples,
        k=args.k,
        kernel=args.kernel,
        solver=args.solver,
        pruning_tol=args.pruning_tol,
        split=args.split,
        layers=layers,
        seed=args.seed,
        batch_size=args.batch_size,
        data_dir=args.data_dir,
        figures=not args.no_figures,
    )
    atomic_write_text(Path(args.out) / "overlap.md", "# Channel-wise NNK overlap\n\n" + overlap_markdown(result, "."))
    for r in result["runs"]:
        L = r["last_layer"]
        print(
            f"{r['name']}: last conv layer {L['name']}: M1 {L['jaccard_score']:.3f}  1-M2 {L['redundancy']:.3f}  "
            f"M3 {L['aggregate_ratio']:.3f}  test acc {_fmt(r['test_acc'], 4)}"
        )
    print(f"wrote {Path(args.out) / 'overlap.json'} and {Path(args.out) / 'overlap.md'}")
    return 0
