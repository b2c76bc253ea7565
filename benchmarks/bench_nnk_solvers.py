"""Exact against pruning NNK solver (issue 14): how much the solver choice moves the NNK numbers.

convsim's default ``solver="exact"`` finds the NNK optimum (Lawson--Hanson active set);
``solver="pruning"`` is the one-way pruning solver of the authors' released code (PyNNK, DeepNNK,
CW-DeepNNK; spec §1.9(b)), with which the published numbers were computed. Measured here:

(a) Synthetic manifolds of known intrinsic dimension d in R^32, N = 3000 points, k = 50, Gaussian
    kernel with the per-query bandwidth (spec §1.14): points uniform in a cube of a random
    d-dimensional linear subspace, and uniform on a d-sphere (rotated into R^32). Per d: support
    agreement (share of points whose NNK neighbour sets are identical), mean Jaccard of the two
    neighbour sets, objective gap ``f(pruning) - f(exact)`` with
    ``f = 1/2 theta' K theta - b' theta`` (= half the gap in reconstruction error), the mean NNK
    count (the intrinsic-dimension proxy), the pruning solver's KKT violation and the time of each
    (``nnk_neighbors``, search included).
(b) Every conv layer of the quick suite's trained runs of study ``main`` (``runs/quick/runs``, the
    runs of ``make demo``; models rebuilt with ``convsim.training.loop.load_run``), analysed as the
    report's overlap section does (500 training images, k = 15, cosine kernel, duplicates dropped):
    per-channel support agreement and objective gap, mean NNK count per channel and of the whole
    layer (the intrinsic-dimension proxy), M1, 1 - M2, M3, the LOO errors, the Pearson and Spearman
    r of each last-layer measure against test accuracy across runs, and the time of each
    (``layer_overlap`` of a whole run).
(c) Solver speed alone on batches of NNK systems: exact and pruning, torch and numba engines.

Timing: (a) and (c) are medians over ``--repeats`` rounds after a warm-up (numba's cached code is
loaded in the warm-up), the two solvers interleaved within a round; (b) is one timing per run and
solver (interleaved), summarised by the median over runs and the total. 2 torch threads.

    python benchmarks/bench_nnk_solvers.py            # writes benchmarks/results/nnk_solvers.md
    python benchmarks/bench_nnk_solvers.py --quick    # small sizes, prints only
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "2")

import argparse  # noqa: E402
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections import defaultdict  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402
from bench_nnk import machine_note  # noqa: E402  (the same machine line as the NNK benchmark)
from machine_load import machine_state  # noqa: E402
from scipy import stats  # noqa: E402

from convsim import data  # noqa: E402
from convsim._internal.files import atomic_write_text  # noqa: E402
from convsim.nnk import layer_overlap, nnk_neighbors  # noqa: E402
from convsim.nnk.solvers import active_set, numba_available, pruning  # noqa: E402
from convsim.reporting.methods import is_collapsed  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results" / "nnk_solvers.md"
SOLVERS = ("exact", "pruning")


def timed(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per function after one warm-up call each (methods interleaved per round),
    and each function's last result."""
    out = {name: f() for name, f in fns.items()}
    runs: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, f in fns.items():
            t = time.perf_counter()
            out[name] = f()
            runs[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in runs.items()}, out


def multi_collapse(w_prune: torch.Tensor, tol: float = 1e-6) -> torch.Tensor:
    """Rows (..., k) where the pruning solver's near-duplicate collapse kept two or more candidates
    (each keeps its kernel value, about 1, so the reconstruction error is about (m - 1)^2)."""
    return (w_prune > 1 - tol).sum(-1) >= 2


def gap_cells(gap: torch.Tensor, multi: torch.Tensor) -> str:
    """'mean / median / max | share collapsed onto >= 2 | mean of the others' of objective gaps."""
    g, m = gap.double().flatten(), multi.flatten()
    if not g.numel():
        return "– | – | –"
    rest = g[~m]
    return (
        f"{float(g.mean()):.1e} / {float(g.median()):.1e} / {float(g.max()):.1e} | {float(m.double().mean()):.4f} "
        f"| {float(rest.mean()) if rest.numel() else 0.0:.1e}"
    )


def support_stats(w_exact: torch.Tensor, w_prune: torch.Tensor) -> tuple[float, float]:
    """(share of rows with identical supports, mean Jaccard of the supports) over rows (..., k)."""
    a, b = w_exact > 0, w_prune > 0
    same = (a == b).all(-1)
    inter, union = (a & b).sum(-1).double(), (a | b).sum(-1).double()
    jac = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(union))
    return float(same.double().mean()), float(jac.mean())


# ----------------------------------------------------------------------------- (a) manifolds


def manifold(kind: str, n: int, dim: int, ambient: int, seed: int) -> torch.Tensor:
    """n points of a dim-dimensional manifold in R^ambient: a cube in a random linear subspace, or
    the unit dim-sphere (in R^(dim+1)) under a random rotation."""
    rng = np.random.default_rng(seed)
    if kind == "subspace":
        basis, _ = np.linalg.qr(rng.standard_normal((ambient, dim)))
        return torch.tensor(rng.uniform(-1, 1, (n, dim)) @ basis.T)
    z = rng.standard_normal((n, dim + 1))
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    basis, _ = np.linalg.qr(rng.standard_normal((ambient, dim + 1)))
    return torch.tensor(z @ basis.T)


def bench_manifolds(dims: Sequence[int], n: int, k: int, repeats: int) -> list[str]:
    rows = [
        "| manifold | d | support agreement | mean Jaccard | objective gap mean / median / max | "
        "collapsed onto >= 2 | gap mean, others | pruning worse (> 1e-9) | mean count exact | mean count pruning | "
        "pruning KKT max | time exact (s) | time pruning (s) |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for kind in ("subspace", "sphere"):
        for d in dims:
            X = manifold(kind, n, d, 32, seed=d)
            fns = {s: (lambda s=s, X=X: nnk_neighbors(X, k=k, kernel="gaussian", solver=s)) for s in SOLVERS}
            t, res = timed(fns, repeats)
            ex, pr = res["exact"], res["pruning"]
            agree, jac = support_stats(ex.weights, pr.weights)
            gap = (pr.error - ex.error) / 2  # f = (e - 1) / 2
            rows.append(
                f"| {kind} | {d} | {agree:.3f} | {jac:.3f} | {gap_cells(gap, multi_collapse(pr.weights))} "
                f"| {float((gap > 1e-9).double().mean()):.3f} | {float(ex.count.double().mean()):.2f} | "
                f"{float(pr.count.double().mean()):.2f} | {float(pr.kkt.max()):.1e} | {t['exact']:.3f} | "
                f"{t['pruning']:.3f} |"
            )
            print(rows[-1], flush=True)
    return rows


# ----------------------------------------------------------------------------- (b) trained runs


def main_study_runs(runs_dir: Path) -> list[Path]:
    """The complete runs of study ``main`` (with their checkpoint), sorted by name."""
    out = []
    for d in sorted(runs_dir.iterdir()):
        spec, summ = d / "spec.json", d / "summary.json"
        if not (spec.exists() and summ.exists() and (d / "checkpoint.pt").exists()):
            continue
        in_main = "main" in json.loads(spec.read_text()).get("studies", [])
        if in_main and json.loads(summ.read_text()).get("status") == "complete":
            out.append(d)
    return out


def samples(dataset: str, n: int, seed: int, root: str | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The report's image subset: a seeded ``n`` of the training split, normalised."""
    images, labels = data.load(dataset, "train", root=root)
    if images.shape[0] > n:
        pick = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(seed))[:n].sort().values
        images, labels = images[pick], labels[pick]
    return data.normalize(images, dataset), labels


def layer_record(ex: Any, pr: Any) -> dict[str, Any]:
    """Exact-vs-pruning numbers of one layer (two ChannelOverlap results)."""
    live = ~ex.dead
    agree, jac = support_stats(ex.weights[live], pr.weights[live])
    gap = ((pr.errors - ex.errors)[:, live] / 2).double().T  # (live channels, N), like the weights

    def measures(r: Any) -> dict[str, float]:
        return {
            "count": float(r.counts[:, live].double().mean()) if bool(live.any()) else 0.0,
            "layer_count": float(r.aggregate_counts.double().mean()),
            "M1": r.jaccard_score,
            "1-M2": 1 - float(r.union_ratio),
            "M3": float(r.aggregate_ratio),
            "loo": float(r.loo_error[live].mean()) if bool(live.any()) else 1.0,
            "layer_loo": float(r.layer_loo_error),
        }

    return {
        "agree": agree,
        "jaccard": jac,
        "gap": gap,
        "multi": multi_collapse(pr.weights[live]),
        "layer_agree": float((ex.aggregate_counts == pr.aggregate_counts).double().mean()),
        "exact": measures(ex),
        "pruning": measures(pr),
    }


def analyse_runs(run_dirs: Sequence[Path], n: int, k: int) -> list[dict[str, Any]]:
    from convsim.training.loop import load_run

    cache: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
    out = []
    for i, rd in enumerate(run_dirs):
        model, config, summary = load_run(rd)
        key = (config.dataset, config.data_dir)
        if key not in cache:
            cache[key] = samples(config.dataset, n, 0, config.data_dir)
        x, y = cache[key]
        res, secs = {}, {}
        for s in SOLVERS:
            t = time.perf_counter()
            res[s] = layer_overlap(model, x, labels=y, n_samples=x.shape[0], k=k, solver=s, return_neighbors=True)
            secs[s] = time.perf_counter() - t
        layers = [layer_record(res["exact"][name], res["pruning"][name]) for name in res["exact"]]
        acc = summary.get("test_acc")
        out.append(
            {
                "name": rd.name,
                "model": config.model,
                "test_acc": acc,
                "collapsed": acc is None or is_collapsed(float(acc), data.DATASETS[config.dataset].classes),
                "layers": layers,
                "seconds": secs,
            }
        )
        print(f"[{i + 1}/{len(run_dirs)}] {rd.name}: exact {secs['exact']:.1f} s, pruning {secs['pruning']:.1f} s")
    return out


MEASURES = {
    "count": "mean NNK count per channel",
    "layer_count": "mean NNK count of the whole layer (ID proxy)",
    "M1": "M1 (mean off-diagonal Jaccard)",
    "1-M2": "1 - M2 (redundancy)",
    "M3": "M3 (layer count / sum of channel counts)",
    "loo": "mean per-channel LOO error",
    "layer_loo": "LOO error of the whole layer",
}


def run_tables(runs: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| model | runs | layers | which | support agreement | mean Jaccard | objective gap mean / median / max | "
        "collapsed onto >= 2 | gap mean, others | layer count equal | "
        + " | ".join(f"{m} exact / pruning" for m in MEASURES)
        + " |",
        "|---|---:|---:|---|---:|---:|---|---:|---:|---:|" + "---|" * len(MEASURES),
    ]
    by_model: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in runs:
        by_model[r["model"]].append(r)
    for model, rs in sorted(by_model.items()):
        for which, pick in (("all conv layers", slice(None)), ("last conv layer", slice(-1, None))):
            lays = [lay for r in rs for lay in r["layers"][pick]]

            def mean(key: str, lays: list[dict[str, Any]] = lays) -> float:
                return float(np.mean([lay[key] for lay in lays]))

            cells = " | ".join(
                f"{np.mean([lay['exact'][m] for lay in lays]):.3f} / {np.mean([lay['pruning'][m] for lay in lays]):.3f}"
                for m in MEASURES
            )
            gaps = torch.cat([lay["gap"].flatten() for lay in lays])
            multi = torch.cat([lay["multi"].flatten() for lay in lays])
            rows.append(
                f"| {model} | {len(rs)} | {len(lays)} | {which} | {mean('agree'):.3f} | {mean('jaccard'):.3f} | "
                f"{gap_cells(gaps, multi)} | {mean('layer_agree'):.3f} | {cells} |"
            )
    return rows


def correlation_rows(runs: list[dict[str, Any]]) -> list[str]:
    rows = [
        "| runs | last-layer measure | n | Pearson r exact | Pearson r pruning | Spearman r exact "
        "| Spearman r pruning |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    trained = [r for r in runs if not r["collapsed"]]
    groups = [("all models", trained)] + [
        (f"{m} only", [r for r in trained if r["model"] == m]) for m in sorted({r["model"] for r in trained})
    ]
    for label, rs in groups:
        acc = [float(r["test_acc"]) for r in rs]
        for m, desc in MEASURES.items():
            cells = []
            for s in SOLVERS:
                xs = [r["layers"][-1][s][m] for r in rs]
                ok = len(rs) >= 3 and np.ptp(xs) > 0 and np.ptp(acc) > 0
                cells.append((stats.pearsonr(xs, acc)[0], stats.spearmanr(xs, acc)[0]) if ok else (float("nan"),) * 2)
            rows.append(
                f"| {label} | {desc} | {len(rs)} | {cells[0][0]:.2f} | {cells[1][0]:.2f} | {cells[0][1]:.2f} "
                f"| {cells[1][1]:.2f} |"
            )
    return rows


def bench_runs(runs_dir: Path, n: int, k: int, limit: int | None) -> list[str]:
    run_dirs = main_study_runs(runs_dir) if runs_dir.is_dir() else []
    if limit is not None:
        run_dirs = run_dirs[:limit]
    if not run_dirs:
        return [f"_no complete runs of study `main` with checkpoints under `{runs_dir}`: run `make demo` first_"]
    runs = analyse_runs(run_dirs, n, k)
    secs = {s: [r["seconds"][s] for r in runs] for s in SOLVERS}
    excluded = [r["name"] for r in runs if r["collapsed"]]
    lines = [
        f"{len(runs)} runs of study `main` of the quick suite (`{runs_dir.relative_to(ROOT)}`), every conv layer, "
        f"{n} training images per run (the report's seeded subset), k = {k}, cosine kernel, duplicates dropped. "
        "Support agreement and objective gap are per (image, live channel); *layer count equal* is the share of "
        "images whose whole-layer NNK count is the same under both solvers. Measures are means over the layers "
        "(and runs) of each row.",
        "",
        *run_tables(runs),
        "",
        "Last-conv-layer measures against test accuracy across runs"
        + (f" (runs at chance accuracy left out: {', '.join(excluded)})" if excluded else "")
        + ":",
        "",
        *correlation_rows(runs),
        "",
        f"Time of `layer_overlap` (every conv layer of a run, LOO errors included): median per run "
        f"{statistics.median(secs['exact']):.2f} s exact, {statistics.median(secs['pruning']):.2f} s pruning; "
        f"total {sum(secs['exact']):.0f} s exact, {sum(secs['pruning']):.0f} s pruning.",
    ]
    return lines


# ----------------------------------------------------------------------------- (c) solver speed


def kernel_systems(B: int, k: int, d: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine-kernel systems of B queries with k random candidates in d dims (+ 1e-8 jitter)."""
    g = torch.Generator().manual_seed(seed)
    X = torch.nn.functional.normalize(torch.randn(B, k + 1, d, generator=g, dtype=torch.float64), dim=-1)
    G = 0.5 + 0.5 * X @ X.transpose(1, 2)
    A = G[:, 1:, 1:] + 1e-8 * torch.eye(k, dtype=torch.float64)
    return A.contiguous(), G[:, 1:, 0].contiguous()


def bench_solvers(B: int, repeats: int) -> list[str]:
    rows = [
        "| systems | k | d | exact, numba (s) | exact, torch (s) | pruning, numba (s) | pruning, torch (s) | "
        "pruning rounds (mean) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    engines = ("numba", "torch") if numba_available() else ("torch",)
    for k, d in ((15, 4), (25, 9), (50, 16)):
        A, b = kernel_systems(B, k, d)
        fns: dict[str, Callable[[], Any]] = {}
        for e in engines:
            fns[f"exact {e}"] = lambda e=e, A=A, b=b: active_set(A, b, engine=e)
            fns[f"pruning {e}"] = lambda e=e, A=A, b=b: pruning(A, b, engine=e)
        t, res = timed(fns, repeats)

        def cell(name: str, t: dict[str, float] = t) -> str:
            return f"{t[name]:.3f}" if name in t else "–"

        rounds = float(res[f"pruning {engines[0]}"].iterations.double().mean())
        rows.append(
            f"| {B} | {k} | {d} | {cell('exact numba')} | {cell('exact torch')} | {cell('pruning numba')} "
            f"| {cell('pruning torch')} | {rounds:.2f} |"
        )
        print(rows[-1], flush=True)
    return rows


def bench_cuda(B: int, repeats: int) -> list[str]:
    if not torch.cuda.is_available():
        return ["No CUDA device on this machine: the GPU rows (torch path) are not measured here."]
    dev = torch.device("cuda")
    A, b = (t.to(dev) for t in kernel_systems(B, 25, 9))

    def synced(fn: Callable[[], Any]) -> Callable[[], Any]:
        def run() -> Any:
            out = fn()
            torch.cuda.synchronize()
            return out

        return run

    t, _ = timed({s: synced(lambda s=s: (active_set if s == "exact" else pruning)(A, b)) for s in SOLVERS}, repeats)
    return [
        f"GPU ({torch.cuda.get_device_name(dev)}, torch path): {B} systems, k = 25, d = 9: "
        f"exact {t['exact']:.3f} s, pruning {t['pruning']:.3f} s."
    ]


# ----------------------------------------------------------------------------- report


NOTES = """Notes:

* Both solvers get the same candidates, kernels, jitter (1e-8) and duplicate policy; only the
  quadratic program's solver differs. The pruning solver uses the released tolerance 1e-6 (weight
  floor, stop rule and near-duplicate collapse at K > 1 - 1e-6); the exact solver's weights are
  thresholded at 1e-10. Counts therefore also differ by weights in (1e-10, 1e-6].
* The objective gap is f(pruning) - f(exact) for f = 1/2 theta' K theta - b' theta on the
  un-jittered kernel; it is >= 0 up to rounding because the exact solver finds the minimum.
  "collapsed onto >= 2" is the share of points (or (image, channel) pairs) where the released
  near-duplicate rule fired with two or more candidates above 1 - 1e-6: each keeps its kernel
  value (about 1), so m such candidates reconstruct the query with error about (m - 1)^2 (up to
  (k - 1)^2 = 196 for k = 15 when every candidate of a sparse ReLU channel map is a copy). Those
  points dominate the mean and the maximum; "gap mean, others" leaves them out.
* "pruning worse" is the share of points whose gap exceeds 1e-9; "pruning KKT max" the largest
  KKT violation of the pruning weights (the exact solver's is below 1e-8 by construction).
* With numba installed both solvers run compiled on CPU (`engine="auto"`); the torch engine is what
  GPUs and users without numba get (table (c))."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, print only")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=Path, default=ROOT / "runs" / "quick" / "runs", help="quick suite's runs")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    before = machine_state()
    q = args.quick
    reps = 1 if q else args.repeats
    lines = [
        "# Exact against pruning NNK solver (`benchmarks/bench_nnk_solvers.py`)",
        "",
        '`solver="exact"` (default) finds the NNK optimum; `solver="pruning"` is the authors\' released '
        "one-way solver (spec §1.9(b)), which the published NNK / CW-NNK numbers used.",
        "",
        "## (a) Synthetic manifolds of known intrinsic dimension d",
        "",
        f"{300 if q else 3000} points in R^32, k = 50, Gaussian kernel with the per-query bandwidth (distance to the "
        f"k-th candidate / 3), every point a query; median of {reps} timed repeats.",
        "",
        *bench_manifolds([1, 2, 4] if q else [1, 2, 3, 4, 6, 8, 12], 300 if q else 3000, 50, reps),
        "",
        "## (b) Conv layers of the quick suite's trained runs",
        "",
        *bench_runs(args.runs, 100 if q else 500, 15, 3 if q else None),
        "",
        "## (c) Solver speed on batches of NNK systems",
        "",
        f"Cosine-kernel systems of random candidates (d = feature dimension), median of {reps} repeats.",
        "",
        *bench_solvers(2000 if q else 20000, reps),
        "",
        *bench_cuda(20000, reps),
        "",
        f"Machine: {machine_note(before)}",
        "",
        NOTES,
        "",
    ]
    text = "\n".join(lines)
    print(text)
    if not q:
        atomic_write_text(args.out, text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
