"""``convsim analyze``: channel redundancy of any conv net (yours or a convsim run) on your data.

    convsim analyze --model my_net.py:build --weights net.pt --data images/ --image-size 32 32 --out runs/analysis
    convsim analyze --model runs/cs-reg --data fashion-mnist --out runs/cs-reg-analysis

What ``--model``, ``--weights`` and ``--data`` accept: :mod:`convsim.cli.inputs`. The measures and
the schema of ``analysis.json``: :mod:`convsim.analysis`; the files: :mod:`convsim.reporting.analysis`.
"""

from __future__ import annotations

import argparse

import torch

from convsim._internal.errors import UserError
from convsim.analysis import analyze
from convsim.cli.arguments import COUNT
from convsim.cli.inputs import load_data, load_model
from convsim.reporting.analysis import write_analysis


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model",
        required=True,
        metavar="SPEC",
        help="FILE.py:CALLABLE or package.module:CALLABLE (called with no arguments, returns an nn.Module), "
        "or a run directory of convsim train",
    )
    parser.add_argument("--weights", metavar="FILE", help="a state dict (torch.save(model.state_dict(), FILE))")
    parser.add_argument(
        "--data",
        required=True,
        metavar="SOURCE",
        help="a convsim dataset name (its test split), a tensor file .pt/.npy (N, C, *spatial), "
        "or a folder of images (flat or one subfolder per class)",
    )
    parser.add_argument(
        "--image-size", type=COUNT, nargs=2, metavar=("H", "W"), help="resize folder images to H x W (bilinear)"
    )
    parser.add_argument("--data-dir", help="folder searched first for a dataset's files")
    parser.add_argument("--out", required=True, help="output folder: analysis.json, report.md, figures")
    parser.add_argument("--layers", metavar="REGEX", help="analyse the conv layers whose name matches (re.search)")
    parser.add_argument("--n-samples", type=COUNT, default=2000, help="inputs in the CW-NNK sample (default 2000)")
    parser.add_argument("-k", "--k", type=COUNT, default=25, help="NNK candidates per point (default 25)")
    parser.add_argument("--batch-size", type=COUNT, default=256, help="forward batch size (default 256)")
    parser.add_argument("--device", default="cpu", help="torch device to run on (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the CW-NNK sample (default 0)")
    parser.add_argument("--threads", type=COUNT, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--no-figures", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _device(name: str) -> torch.device:
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise UserError(f"--device {name}: not a torch device ({e})") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def run(args: argparse.Namespace) -> int:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = _device(args.device)
    image_size = (args.image_size[0], args.image_size[1]) if args.image_size else None
    model, info = load_model(args.model, args.weights)
    x, y, described = load_data(args.data, image_size, args.data_dir)
    result = analyze(
        model,
        x,
        labels=y,
        layers=args.layers,
        n_samples=args.n_samples,
        k=args.k,
        batch_size=args.batch_size,
        device=device,
        seed=args.seed,
        progress=not args.no_progress,
    )
    paths = write_analysis(result, args.out, inputs={**info, "data": described}, figures=not args.no_figures)
    for lay in result.layers:
        m1 = "n/a" if lay.cwnnk is None else f"{lay.cwnnk['M1']:.3f}"
        cs = "n/a" if lay.cs is None else f"{lay.cs:.4g}"
        print(f"{lay.name}: CS {cs}  |FM cos| {lay.fm_abs_cos:.3f}  eff. rank {lay.fm_effective_rank:.2f}  M1 {m1}")
    print(f"wrote {paths['analysis.json']} and {paths['report.md']}")
    return 0
