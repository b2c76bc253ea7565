"""The ``generative`` suite's report: does CS on a decoder or generator lower its feature-map
similarity and improve its samples?

For each generative model (VAE, DCGAN) two claims are tested, each with one primary comparison,
CS-reg at the suite's primary strength against the baseline, paired by seed:

* **fm** — CS lowers the decoder's / generator's feature-map similarity (``fm_similarity``, mean
  uncentred |cos| on fixed latent codes): baseline − CS-reg > 0 supports it;
* **fd** — CS improves the samples: baseline − CS-reg > 0 on ``fd``, the Fréchet distance in the
  features of convsim's own FD classifier (not comparable with Inception FID).

The other CS groups (the second strength, CS-init, stride-aware CS-reg) are secondary comparisons
against the baseline, Holm-adjusted within the claim; stride-aware against plain CS-reg at the
same strength is reported beside them. The verdict rules and margins are those of
:mod:`convsim.reporting.verdicts`. The report writes ``report.md``, ``results.json`` and figures:
FD and test-NELBO curves over epochs and, when the runs' checkpoints are present, sample grids
(kept when they are not, so a committed report can be rebuilt from run files alone).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from convsim._internal.files import atomic_write, atomic_write_json, atomic_write_text
from convsim.models import GENERATIVE_MODELS
from convsim.reporting.intervals import mean_ci
from convsim.reporting.runs import Group, group_runs, load_runs
from convsim.reporting.tables import fmt_estimate, fmt_sci, markdown_table
from convsim.reporting.verdicts import Comparison, evaluate_family, rules_text

#: claim id -> (metric, what it says); a positive baseline − CS contrast supports each.
CLAIMS = {
    "fm": ("fm_similarity", "CS on the {part} lowers its feature-map similarity"),
    "fd": ("fd", "CS on the {part} improves FD"),
}
PART = {"vae": "VAE decoder", "dcgan": "DCGAN generator"}
FIGURES = {"fd": "fd_curves.png", "test_nelbo": "nelbo_curves.png", "samples": "samples.png"}


def _terms(better: Group, worse: Group, metric: str) -> tuple[tuple[float, dict], ...]:
    """baseline − method (``worse`` − ``better``): positive when the method lowers ``metric``."""
    return ((1.0, worse.values(metric)), (-1.0, better.values(metric)))


def _comparisons(groups: Mapping[str, Group], model: str, primary: str, metric: str) -> tuple[Any, list[Any]]:
    base = groups.get(f"{model}-w1-baseline")
    first = groups.get(primary)
    if base is None or first is None:
        return None, []
    head = Comparison(f"baseline − {first.name}", metric, _terms(first, base, metric))
    rest = [
        Comparison(f"baseline − {g.name}", metric, _terms(g, base, metric))
        for name, g in groups.items()
        if name.startswith(f"{model}-") and g.method != "baseline" and name != primary
    ]
    stride = groups.get(f"{primary}-stride")
    if stride is not None:
        rest.append(Comparison(f"{first.name} − {stride.name}", metric, _terms(stride, first, metric)))
    return head, rest


def generative_claims(groups: Mapping[str, Group], primary: Mapping[str, str]) -> list[dict]:
    """Each model's fm and fd claims: ``{id, model, claim, verdict, primary, comparisons}``."""
    out = []
    for model in GENERATIVE_MODELS:
        for cid, (metric, text) in CLAIMS.items():
            head, rest = _comparisons(groups, model, primary[model], metric)
            first, secondary = evaluate_family(head, rest)
            out.append(
                {
                    "id": f"{model}-{cid}",
                    "model": model,
                    "claim": text.format(part=PART[model]),
                    "verdict": first["verdict"] if first else "not tested",
                    "primary": first,
                    "comparisons": secondary,
                }
            )
    return out


COLUMNS = (
    ("fd", "FD", 2),
    ("test_nelbo", "test NELBO (nats)", 1),
    ("fm_similarity", "fm |cos|", 3),
    ("fm_similarity_centered", "fm |cos| centred", 3),
    ("kernel_cosine", "kernel |cos|", 3),
)


def groups_table(groups: Mapping[str, Group]) -> str:
    """One row per group: seeds, then each metric's mean [95% CI] at the last epoch, CS and normalised CS."""
    rows = []
    for name, g in sorted(groups.items()):
        cells = [name, len(g.runs)] + [fmt_estimate(g.estimate(k), 1.0, d) for k, _, d in COLUMNS]
        rows.append(cells + [fmt_sci(g.estimate("cs")), fmt_sci(g.estimate("cs_normalized"))])
    return markdown_table(["group", "seeds", *(h for _, h, _ in COLUMNS), "CS", "normalised CS"], rows)


def claims_table(claims: Sequence[Mapping[str, Any]]) -> str:
    rows = []
    for c in claims:
        p = c["primary"]
        est = p["estimate"] if p else None
        interval = (
            f"{est['mean']:+.4g} [{est['low']:+.4g}, {est['high']:+.4g}]" if est and est["low"] is not None else "—"
        )
        rows.append(
            [
                c["claim"],
                p["label"] if p else "—",
                interval,
                f"{p['p']:.3g}" if p and p["p"] is not None else "—",
                f"**{c['verdict']}**",
                p["loo_stable"] if p else "—",
            ]
        )
    return markdown_table(["claim", "primary comparison", "estimate [95% CI]", "p", "verdict", "LOO stable"], rows)


def secondary_table(claims: Sequence[Mapping[str, Any]]) -> str:
    rows = [
        [
            c["id"],
            s["label"],
            s["text"].split(": ", 1)[-1],
            f"{s['p_holm']:.3g}" if s["p_holm"] is not None else "—",
            s["verdict"],
            s["loo_stable"],
        ]
        for c in claims
        for s in c["comparisons"]
    ]
    return markdown_table(["claim", "comparison", "estimate", "p (Holm)", "verdict", "LOO stable"], rows)


def _curve_figure(groups: Mapping[str, Group], key: str, ylabel: str, path: Path) -> Path | None:
    """Mean over seeds (band: 95% CI) of ``key`` against the epoch, one panel per model that logs it."""
    models = [
        m for m in GENERATIVE_MODELS if any(n.startswith(f"{m}-") and g.runs[0].curve(key) for n, g in groups.items())
    ]
    if not models:
        return None
    fig = Figure(figsize=(5.2 * len(models), 3.8), layout="constrained")
    for ax, model in zip(fig.subplots(1, len(models), squeeze=False)[0], models, strict=True):
        for name, g in groups.items():
            if not name.startswith(f"{model}-"):
                continue
            curves = [r.curve(key) for r in g.runs]
            epochs = sorted(set.intersection(*(set(c) for c in curves)))
            est = [mean_ci([c[e] for c in curves]) for e in epochs]
            ax.plot(epochs, [e.mean for e in est], label=name.removeprefix(f"{model}-w1-"))
            if all(e.low is not None for e in est):
                ax.fill_between(epochs, [e.low for e in est], [e.high for e in est], alpha=0.15)
        ax.set(title=PART[model], xlabel="epoch", ylabel=ylabel)
        ax.legend(fontsize=7)
    return _save(fig, path)


def _save(fig: Figure, path: Path) -> Path:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    return path


def _sample_figure(groups: Mapping[str, Group], primary: Mapping[str, str], path: Path) -> Path | None:
    """Generated images of seed 0's baseline and primary CS-reg runs, from their checkpoints (if present)."""
    from convsim.training.generative import generate
    from convsim.training.loop import load_run

    panels = []
    for model in GENERATIVE_MODELS:
        for name in (f"{model}-w1-baseline", primary[model]):
            g = groups.get(name)
            if g is None or not (g.runs[0].path / "checkpoint.pt").exists():
                return None
            net, _, _ = load_run(g.runs[0].path)
            panels.append((name, generate(net, 36, seed=0)))  # type: ignore[arg-type]
    fig = Figure(figsize=(3.0 * len(panels), 3.3), layout="constrained")
    for ax, (name, images) in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels, strict=True):
        grid = images[:, 0].reshape(6, 6, *images.shape[-2:]).permute(0, 2, 1, 3).reshape(6 * images.shape[-2], -1)
        ax.imshow(grid.numpy(), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name, fontsize=8)
        ax.axis("off")
    return _save(fig, path)


def write_generative_report(
    out_dir: str | Path,
    runs_dir: str | Path,
    primary: Mapping[str, str],
    *,
    include: Sequence[str],
    pending: Sequence[str] = (),
) -> dict:
    """Aggregate the suite's runs into ``report.md``, ``results.json`` and ``figures/``; returns the results."""
    out_dir, runs_dir = Path(out_dir), Path(runs_dir)
    keep = set(include)
    groups = group_runs([r for r in load_runs(runs_dir) if r.name in keep]) if runs_dir.is_dir() else {}
    claims = generative_claims(groups, primary)
    figs = out_dir / "figures"
    made = {
        "fd": _curve_figure(groups, "fd", "FD (convsim classifier features)", figs / FIGURES["fd"]),
        "test_nelbo": _curve_figure(groups, "test_nelbo", "test NELBO (nats / image)", figs / FIGURES["test_nelbo"]),
        "samples": _sample_figure(groups, primary, figs / FIGURES["samples"]) or _existing(figs / FIGURES["samples"]),
    }
    classifiers = sorted(
        {
            json.dumps((r.summary.get("initial") or {}).get("fd_classifier"), sort_keys=True)
            for g in groups.values()
            for r in g.runs
        }
    )
    results = {
        "suite": "generative",
        "claims": claims,
        "pending": list(pending),
        "fd_classifiers": [json.loads(c) for c in classifiers],
    }
    atomic_write_json(out_dir / "results.json", results)
    atomic_write_text(out_dir / "report.md", _markdown(groups, claims, made, pending, results["fd_classifiers"]))
    return results


def _existing(path: Path) -> Path | None:
    return path if path.exists() else None


def _markdown(
    groups: Mapping[str, Group],
    claims: list[dict],
    figs: Mapping[str, Path | None],
    pending: Sequence[str],
    classifiers: Sequence[Any],
) -> str:
    parts = ["# CS for generative models: the `generative` suite\n"]
    if pending:
        parts.append(f"**Suite not complete: {len(pending)} runs missing.**\n")
    parts += [
        "## Claims\n",
        claims_table(claims),
        "\n### Secondary comparisons (Holm-adjusted within each claim)\n",
        secondary_table(claims),
    ]
    parts += ["\n## Groups (last epoch, mean [95% CI] over seeds)\n", groups_table(groups)]
    for key, caption in (
        ("fd", "FD over epochs"),
        ("test_nelbo", "VAE test NELBO over epochs"),
        ("samples", "Samples (seed 0)"),
    ):
        if figs.get(key) is not None:
            parts.append(f"\n![{caption}](figures/{FIGURES[key]})\n")
    parts += [
        "\n## FD classifier\n",
        "FD is measured in the 64 penultimate features of a cnn2 that convsim trains on the dataset with a fixed "
        "recipe (`convsim.training.fd_features.RECIPE`), not in Inception features: it is comparable only "
        "between runs that share the classifier's SHA-256, and never with published FID values. Classifiers used: "
        + ", ".join(f"`{c['sha256'][:12]}` (test accuracy {c['test_acc']:.4f})" for c in classifiers if c)
        + ".\n",
    ]
    parts += ["\n## How the verdicts are reached\n", rules_text()]
    return "\n".join(parts)
