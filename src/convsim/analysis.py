r"""Channel redundancy of any trained conv net: :func:`analyze` and its result, :class:`Analysis`.

``analyze(model, data)`` measures every selected conv layer (``Conv1d/2d/3d`` and
``ConvTranspose1d/2d/3d``) of a model on the given inputs, in three parts:

* **Weights.** CS (:func:`~convsim.similarity.conv_similarity`: all pairs, per channel, within
  groups) and its normalised form (every filter scaled to unit norm first), and the mean
  :math:`|\cos|` over pairs of flattened filters
  (:func:`~convsim.measure.kernel_cosine_matrix`). A transposed conv's filters are its weight
  regrouped as output filters (:func:`convsim._internal.layers.filters`); stride-1 CS and cosines do
  not see the spatial flip between the two layouts.
* **Feature maps**, streamed over *all* of ``data``: each layer's output (the conv's output, bias
  included, before any activation) is reduced batch by batch to its float64 Gram matrix, channel
  sums, position count and per-channel minimum and maximum, never stored. From them, as in
  :class:`~convsim.measure.FeatureMapSimilarity` (the same definitions and helpers): the mean
  :math:`|\cos_{ij}|` over channel pairs of the pooled Gram, uncentred and centred (correlation),
  and the effective rank :math:`(\operatorname{tr}A)^2/\|A\|_F^2` of the Gram and the covariance.
* **CW-NNK** (:func:`convsim.nnk.layer_overlap`) on a seeded sample of ``n_samples`` inputs, with
  ``k`` candidates and the default NNK settings (exact solver, cosine kernel, exact duplicates
  dropped): the overlap measures M1, M1w, M2, M3, the mean NNK count per channel and of the whole
  layer, and, when labels are given, the LOO label-interpolation errors.

A layer with one output channel per group (depthwise) has no filter pairs: its CS, kernel cosine
and CW-NNK are ``None`` ("not applicable"); its feature-map statistics still count.

**Dead channels.** A channel is *dead* when its output varies by at most :data:`DEAD_TOL` times the
largest variation of any channel of the layer, over every input and position seen (maximum minus
minimum): a constant map (an all-zero filter, a channel that is zero everywhere) carries no
information. A channel is *never positive* when its output is :math:`\le 0` everywhere: a ReLU after
the layer makes it a constant zero (a "dead ReLU").

**Data.** ``data`` is a tensor (N, C, \*spatial), split into batches of ``batch_size`` (labels may
come with ``labels=``), or any other iterable of batches, such as a ``DataLoader``: each batch is a
tensor of inputs or a sequence ``(inputs, labels, ...)`` (other entries ignored). The model runs
in eval mode under ``torch.no_grad`` (each module's mode is restored), unwrapped from any
DDP/``torch.compile`` wrapper, on ``device`` (default: where its parameters are; a given device
moves the model there); inputs are cast to its parameters' dtype. The CW-NNK sample is the
``n_samples`` inputs with the smallest seeded random keys (one key per input, drawn in input
order), so it does not depend on how the data are batched. A forward pass that draws random
numbers (a VAE's sampling) uses torch's global generator: seed it for repeatable numbers.

**Schema of** :meth:`Analysis.to_dict` (JSON-ready; ``null`` = not applicable / no labels)::

    {
      "schema": 1, "convsim_version": "0.1.0",
      "n_inputs": 10000,             # inputs streamed for the feature-map statistics
      "n_samples": 2000,             # inputs in the CW-NNK sample (min(n_samples, n_inputs))
      "k": 25, "seed": 0, "labels": true,
      "nnk": {...},                  # every NNK setting (NNKOptions.summary())
      "layers": [                    # in the order the forward pass first calls them
        {"name": "features.0",       # module name, without module. / _orig_mod. prefixes
         "type": "Conv2d", "depth": 1, "in_channels": 1, "out_channels": 4, "groups": 1,
         "kernel_size": [5, 5],
         "cs": 0.12, "cs_normalized": 0.8,        # null for depthwise layers
         "kernel_abs_cos": 0.3,                   # null for depthwise layers
         "fm_abs_cos": 0.5, "fm_abs_cos_centered": 0.2,
         "fm_effective_rank": 1.7, "fm_effective_rank_centered": 3.1,
         "cwnnk": {"M1": 0.1, "M1w": 0.05, "M2": 0.9, "M3": 0.3,       # null for depthwise layers
                   "mean_channel_count": 6.2, "mean_layer_count": 7.0,
                   "layer_loo_error": 0.2, "mean_channel_loo_error": 0.5,   # null without labels
                   "dead_in_sample": 0, "saturated": 0.0},
         "dead_channels": [],                     # channel indices, see "Dead channels"
         "never_positive_channels": [3]}
      ]
    }

M1 is the mean off-diagonal Jaccard index of the channels' NNK neighbourhoods, M1w its
weighted form, M2 :math:`|\bigcup_c\mathcal N^c|/\sum_c|\mathcal N^c|` (1 = disjoint), M3 the
layer's count over the sum of the channels' counts (:mod:`convsim.nnk.channels`);
``dead_in_sample`` counts the channels CW-NNK left out (constant over the sample) and
``saturated`` is the fraction of samples whose layer count reaches 0.8 k. The (M, M) matrices of
feature-map cosines and M1 are kept on the :class:`LayerAnalysis` (``fm_cosine``,
``channel_overlap``) for heat maps, not in the dict.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from convsim._internal.errors import UserError
from convsim._internal.hooks import capture
from convsim._internal.layers import CONV_TYPES, TRANSPOSED_CONV_TYPES, AnyConvLayer, filters, unwrap
from convsim._internal.modes import eval_mode
from convsim.measure import (
    _cosine_from_moment,
    _gram_stats,
    _offdiag,
    _second_moment,
    effective_rank,
    kernel_cosine_matrix,
)
from convsim.similarity import conv_similarity

if TYPE_CHECKING:
    from convsim.nnk.channels import ChannelOverlap

__all__ = ["Analysis", "AnalysisError", "LayerAnalysis", "analyze", "DEAD_TOL", "SCHEMA"]

SCHEMA = 1  # version of the to_dict() layout
DEAD_TOL = 1e-6  # a channel varying by at most this share of its layer's largest variation is dead
_SPATIAL = {1: "L", 2: "H, W", 3: "D, H, W"}  # the spatial dims of a Conv1d/2d/3d input, for messages
Batch = tuple[torch.Tensor, torch.Tensor | None]  # (inputs, labels or None)


class AnalysisError(UserError, ValueError):
    """Arguments or data :func:`analyze` cannot work with (the message says what was expected)."""


@dataclass
class LayerAnalysis:
    """The measures of one conv layer (see the module docstring for each)."""

    name: str
    type: str
    depth: int
    in_channels: int
    out_channels: int
    groups: int
    kernel_size: list[int]
    cs: float | None
    cs_normalized: float | None
    kernel_abs_cos: float | None
    fm_abs_cos: float
    fm_abs_cos_centered: float
    fm_effective_rank: float
    fm_effective_rank_centered: float
    cwnnk: dict[str, Any] | None
    dead_channels: list[int]
    never_positive_channels: list[int]
    fm_cosine: torch.Tensor = field(repr=False)  # (M, M) float64 feature-map cosines
    channel_overlap: torch.Tensor | None = field(default=None, repr=False)  # (M, M) M1, None when n/a

    def to_dict(self) -> dict[str, Any]:
        """The layer's entry of :meth:`Analysis.to_dict` (no matrices)."""
        skip = {"fm_cosine", "channel_overlap"}
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in vars(self).items() if k not in skip}


@dataclass
class Analysis:
    """Result of :func:`analyze`: one :class:`LayerAnalysis` per layer, in forward order, and the settings."""

    layers: list[LayerAnalysis]
    n_inputs: int
    n_samples: int
    k: int
    seed: int
    labels: bool
    nnk: dict[str, Any]
    convsim_version: str

    def layer(self, name: str) -> LayerAnalysis:
        """The analysis of the layer called ``name``."""
        for lay in self.layers:
            if lay.name == name:
                return lay
        raise KeyError(f"no analysed layer {name!r}; the layers are {[lay.name for lay in self.layers]}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict in the documented schema (module docstring)."""
        return {
            "schema": SCHEMA,
            "convsim_version": self.convsim_version,
            "n_inputs": self.n_inputs,
            "n_samples": self.n_samples,
            "k": self.k,
            "seed": self.seed,
            "labels": self.labels,
            "nnk": dict(self.nnk),
            "layers": [lay.to_dict() for lay in self.layers],
        }


# ----------------------------------------------------------------------------------------- layers


def _select(model: nn.Module, layers: str | None) -> dict[str, AnyConvLayer]:
    """Conv and transposed-conv layers of ``model`` whose name matches the regex ``layers`` (``re.search``)."""
    if layers is not None and not isinstance(layers, str):
        raise TypeError(f"layers must be a regular expression (str) or None, got {type(layers).__name__}")
    try:
        pattern = re.compile(layers or "")
    except re.error as e:
        raise AnalysisError(f"layers: {layers!r} is not a valid regular expression ({e})") from e
    convs = {n: m for n, m in model.named_modules() if isinstance(m, CONV_TYPES + TRANSPOSED_CONV_TYPES)}
    chosen = {n: m for n, m in convs.items() if pattern.search(n)}
    if not chosen:
        what = f"matching {layers!r} " if layers else ""
        raise AnalysisError(f"the model has no conv layer {what}(its conv layers: {list(convs) or 'none'})")
    return chosen


class _Reached(Exception):
    """Raised by the probe's hook to stop the forward pass at the first conv layer."""


def _first_conv_input(model: nn.Module, x: torch.Tensor) -> tuple[str, AnyConvLayer, Any] | None:
    """(name, module, input) of the first conv layer ``model(x)`` calls, the pass stopped there; None if none is."""
    convs: dict[nn.Module, str] = {
        m: n for n, m in model.named_modules() if isinstance(m, CONV_TYPES + TRANSPOSED_CONV_TYPES)
    }
    reached: list[tuple[str, AnyConvLayer, Any]] = []

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        reached.append((convs[module], cast(AnyConvLayer, module), args[0] if args else None))
        raise _Reached

    handles = [m.register_forward_pre_hook(hook) for m in convs]
    try:
        model(x)
    except _Reached:
        pass
    except Exception as e:  # the data do not fit what comes before the first conv layer
        raise AnalysisError(f"model(inputs of shape {tuple(x.shape[1:])}) failed: {type(e).__name__}: {e}") from e
    finally:
        for h in handles:
            h.remove()
    return reached[0] if reached else None


def _check_inputs(model: nn.Module, x: torch.Tensor) -> None:
    """Run ``model`` on one input up to its first conv layer, whose input must have its channels and spatial rank."""
    if not x.is_floating_point() or x.dim() < 2:
        raise AnalysisError(f"inputs must be a floating tensor (N, ...), got shape {tuple(x.shape)} {x.dtype}")
    first = _first_conv_input(model, x[:1])
    if first is None:
        return
    name, conv, inp = first
    rank = len(conv.kernel_size)
    if isinstance(inp, torch.Tensor) and (inp.dim() != rank + 2 or inp.shape[1] != conv.in_channels):
        got = "the data have" if inp.shape[1:] == x.shape[1:] else "it receives inputs of"
        dims = ", ".join(map(str, inp.shape[1:]))
        raise AnalysisError(
            f"the model's first conv layer {name} ({type(conv).__name__}) takes inputs (N, {conv.in_channels}, "
            f"{_SPATIAL.get(rank, '*spatial')}) but {got} shape (N, {dims})"
        )


# ------------------------------------------------------------------------------------------- data


def _batches(data: Any, labels: torch.Tensor | None, batch_size: int) -> Iterator[Batch]:
    """``(inputs, labels or None)`` per batch, from a tensor (split into ``batch_size``) or an iterable of batches."""
    if isinstance(data, torch.Tensor):
        if labels is not None and (labels.dim() != 1 or labels.shape[0] != data.shape[0]):
            raise AnalysisError(f"labels must have shape ({data.shape[0]},), got {tuple(labels.shape)}")
        for s in range(0, data.shape[0], batch_size):
            yield data[s : s + batch_size], None if labels is None else labels[s : s + batch_size]
        return
    if labels is not None:
        raise TypeError("labels= goes with a tensor of inputs; an iterable of batches carries its own labels")
    if isinstance(data, (str, bytes, Mapping)) or not isinstance(data, Iterable):
        raise TypeError(f"data must be a tensor (N, C, *spatial) or an iterable of batches, got {type(data).__name__}")
    for batch in data:
        yield _split_batch(batch)


def _split_batch(batch: Any) -> Batch:
    if isinstance(batch, torch.Tensor):
        return batch, None
    if isinstance(batch, (tuple, list)) and batch and isinstance(batch[0], torch.Tensor):
        y = batch[1] if len(batch) > 1 else None
        if isinstance(y, torch.Tensor) and y.dim() == 1 and not y.is_floating_point() and len(y) == len(batch[0]):
            return batch[0], y
        return batch[0], None
    raise TypeError(f"each batch must be a tensor or a sequence (inputs, labels, ...), got {type(batch).__name__}")


class _Sample:
    """The ``size`` inputs (and labels) with the smallest seeded keys seen so far, kept on the CPU.

    Keys come from one numpy generator in input order (a batch of b inputs takes the next b draws),
    so the sample is the same however the inputs are batched.
    """

    def __init__(self, size: int, seed: int):
        self.size = size
        self.rng = np.random.default_rng(seed)
        self.seen = 0
        self.keys = torch.empty(0, dtype=torch.float64)
        self.index = torch.empty(0, dtype=torch.long)
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None

    def add(self, x: torch.Tensor, y: torch.Tensor | None) -> None:
        n = x.shape[0]
        keys = torch.cat([self.keys, torch.from_numpy(self.rng.random(n))])
        index = torch.cat([self.index, torch.arange(self.seen, self.seen + n)])
        xs = x.detach().cpu() if self.x is None else torch.cat([self.x, x.detach().cpu()])
        ys = None if y is None or (self.y is None and self.seen) else y.cpu()
        if ys is not None and self.y is not None:
            ys = torch.cat([self.y, ys])
        self.seen += n
        keep = torch.argsort(keys)[: self.size]
        self.keys, self.index, self.x = keys[keep], index[keep], xs[keep]
        self.y = None if ys is None else ys[keep]

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The sample in input order."""
        if self.x is None:
            raise AnalysisError("data holds no inputs")
        order = torch.argsort(self.index)
        return self.x[order], None if self.y is None else self.y[order]


# ----------------------------------------------------------------------------------- feature maps


class _Moments:
    """Per-layer float64 Gram, channel sums, position count and channel min/max, accumulated over batches."""

    def __init__(self) -> None:
        self.state: dict[str, list[Any]] = {}  # name -> [gram, sums, count, lo, hi]; insertion = call order

    def add(self, name: str, output: torch.Tensor) -> None:
        gram, sums, count = _gram_stats(output)
        dims = [0, *range(2, output.dim())]  # all but the channels
        lo, hi = output.detach().amin(dim=dims).double(), output.detach().amax(dim=dims).double()
        if name not in self.state:
            self.state[name] = [gram, sums, count, lo, hi]
            return
        s = self.state[name]
        s[0] += gram
        s[1] += sums
        s[2] += count
        s[3], s[4] = torch.minimum(s[3], lo), torch.maximum(s[4], hi)

    def summary(self, name: str) -> dict[str, Any]:
        """Feature-map measures of one layer, as :class:`~convsim.measure.FeatureMapSimilarity` defines them."""
        gram, sums, count, lo, hi = self.state[name]
        cov = _second_moment(gram, sums, count, True)
        cos = _cosine_from_moment(gram)
        spread = hi - lo
        dead = spread <= DEAD_TOL * spread.max()
        return {
            "fm_abs_cos": _mean_abs_offdiag(cos),
            "fm_abs_cos_centered": _mean_abs_offdiag(_cosine_from_moment(cov)),
            "fm_effective_rank": float(effective_rank(gram)),
            "fm_effective_rank_centered": float(effective_rank(cov)),
            "dead_channels": torch.nonzero(dead).flatten().tolist(),
            "never_positive_channels": torch.nonzero(hi <= 0).flatten().tolist(),
            "fm_cosine": cos.cpu(),
        }


def _mean_abs_offdiag(mat: torch.Tensor) -> float:
    pairs = _offdiag(mat).abs()
    return float(pairs.mean()) if pairs.numel() else 0.0


def _progress(items: Iterable[Any], show: bool, desc: str, total: int | None = None) -> Iterable[Any]:
    if not show:
        return items
    from tqdm.auto import tqdm  # imported on use: `import convsim` stays light

    return tqdm(items, desc=desc, total=total, leave=False, dynamic_ncols=True)


def _input_dtype(model: nn.Module) -> torch.dtype:
    """The dtype inputs are cast to: the model's floating parameters' (float32 without any)."""
    return next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)


def _n_batches(data: Any, batch_size: int) -> int | None:
    """The number of batches ``data`` gives, for the progress bar (None when unknown)."""
    if isinstance(data, torch.Tensor):
        return -(-data.shape[0] // batch_size)
    try:
        return len(data)
    except TypeError:
        return None


def _stream(
    model: nn.Module,
    names: list[str],
    batches: Iterator[Batch],
    device: torch.device,
    sample: _Sample,
    progress: tuple[bool, int | None],
) -> _Moments:
    """One forward pass over all the data: every layer's moments, and the CW-NNK sample.

    ``progress`` is (show a bar, the number of batches or None).
    """
    moments = _Moments()
    dtype = _input_dtype(model)
    first = next(batches, None)
    if first is None:
        raise AnalysisError("data holds no inputs")
    with eval_mode(model), torch.no_grad():
        _check_inputs(model, first[0].to(device=device, dtype=dtype))  # before the progress bar: errors stay one line
        with capture(model, names, fn=moments.add):
            for x, y in _progress(itertools.chain([first], batches), progress[0], "feature maps", progress[1]):
                model(x.to(device=device, dtype=dtype))
                sample.add(x, y)
    missing = [n for n in names if n not in moments.state]
    if missing:
        raise AnalysisError(f"layers {missing} never ran in model(inputs); leave them out with layers=REGEX")
    return moments


# ------------------------------------------------------------------------------------ weights, NNK


def _has_pairs(module: AnyConvLayer) -> bool:
    """Whether the layer has filter pairs (two output channels per group or more): CS, cosines and CW-NNK apply."""
    return module.out_channels // module.groups >= 2


def _weight_measures(module: AnyConvLayer) -> dict[str, float | None]:
    """CS, normalised CS and mean |kernel cosine| of the layer's output filters (None without pairs)."""
    if not _has_pairs(module):
        return {"cs": None, "cs_normalized": None, "kernel_abs_cos": None}
    w = filters(module).detach().double()
    with torch.no_grad():
        return {
            "cs": float(conv_similarity(w, groups=module.groups)),
            "cs_normalized": float(conv_similarity(w, groups=module.groups, normalize=True)),
            "kernel_abs_cos": _mean_abs_offdiag(kernel_cosine_matrix(w)),
        }


def _cwnnk_summary(r: ChannelOverlap) -> dict[str, Any]:
    d = r.to_dict()
    return {
        "M1": d["jaccard_score"],
        "M1w": d["weighted_score"],
        "M2": d["union_ratio"],
        "M3": d["aggregate_ratio"],
        "mean_channel_count": d["mean_channel_count"],
        "mean_layer_count": d["mean_aggregate_count"],
        "layer_loo_error": d.get("layer_loo_error"),
        "mean_channel_loo_error": d.get("mean_loo_error"),
        "dead_in_sample": d["n_dead"],
        "saturated": d["saturated"],
    }


def _cwnnk(
    model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor | None, k: int, batch_size: int, show: bool
) -> dict[str, ChannelOverlap]:
    """CW-NNK of each named layer on the sample ``x`` (one layer at a time: memory holds one layer's maps)."""
    from convsim.nnk.channels import layer_overlap  # scipy and the solvers: imported on use

    if names and k >= x.shape[0]:
        raise AnalysisError(f"k={k} NNK candidates need more than {k} inputs; the CW-NNK sample has {x.shape[0]}")
    out = {}
    for name in _progress(names, show, "CW-NNK layers"):
        res = layer_overlap(model, x, layers=[name], n_samples=x.shape[0], batch_size=batch_size, labels=y, k=k)
        out[name] = res[name]
    return out


# ------------------------------------------------------------------------------------------- main


def _check_int(value: Any, label: str, least: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{label} must be an int, got {type(value).__name__}")
    if value < least:
        raise AnalysisError(f"{label} must be >= {least}, got {value}")
    return value


def _layer(
    depth: int, name: str, module: AnyConvLayer, moments: _Moments, overlap: ChannelOverlap | None
) -> LayerAnalysis:
    fm = moments.summary(name)
    w = _weight_measures(module)
    return LayerAnalysis(
        name=name,
        type=type(module).__name__,
        depth=depth,
        in_channels=module.in_channels,
        out_channels=module.out_channels,
        groups=module.groups,
        kernel_size=list(module.kernel_size),
        cs=w["cs"],
        cs_normalized=w["cs_normalized"],
        kernel_abs_cos=w["kernel_abs_cos"],
        cwnnk=None if overlap is None else _cwnnk_summary(overlap),
        channel_overlap=None if overlap is None else overlap.jaccard.cpu(),
        **fm,
    )


def analyze(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any],
    *,
    layers: str | None = None,
    n_samples: int = 2000,
    k: int = 25,
    batch_size: int = 256,
    device: str | torch.device | None = None,
    seed: int = 0,
    labels: torch.Tensor | None = None,
    progress: bool = True,
) -> Analysis:
    r"""Weight, feature-map and CW-NNK redundancy of every selected conv layer of ``model``.

    Args:
        model: any ``nn.Module`` (DDP / ``torch.compile`` wrappers are looked through).
        data: inputs (N, C, \*spatial) as a tensor, or an iterable of batches (a ``DataLoader``):
            each batch a tensor or ``(inputs, labels, ...)``. Feature-map statistics use all of it.
        layers: a regular expression; layers whose name it matches (``re.search``) are analysed.
            Default: every Conv1d/2d/3d and ConvTranspose1d/2d/3d.
        n_samples: inputs in the seeded CW-NNK sample (all of them when there are fewer).
        k: NNK candidates per point (needs ``k <`` the sample size).
        batch_size: forward batch size for a tensor ``data`` and for the CW-NNK passes.
        device: where the model runs (it is moved there); default where its parameters are.
        seed: seed of the CW-NNK sample.
        labels: (N,) integer labels of a tensor ``data``, for the LOO errors.
        progress: tqdm progress bars over batches and CW-NNK layers (on stderr).

    Returns:
        :class:`Analysis`; ``to_dict()`` gives the schema of the module docstring.

    Example:
        >>> _ = torch.manual_seed(0)
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3, groups=4))
        >>> a = analyze(net, torch.randn(40, 1, 8, 8), n_samples=30, k=5, progress=False)
        >>> [(lay.name, lay.cs is None, lay.cwnnk is None) for lay in a.layers]   # layer 2 is depthwise
        [('0', False, False), ('2', True, True)]
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    n_samples, k = _check_int(n_samples, "n_samples", 2), _check_int(k, "k", 1)
    batch_size, seed = _check_int(batch_size, "batch_size", 1), _check_int(seed, "seed", 0)
    net = unwrap(model)
    modules = _select(net, layers)
    dev = torch.device(device) if device is not None else next((p.device for p in net.parameters()), None)
    if device is not None:
        net.to(dev)
    sample = _Sample(n_samples, seed)
    batches = _batches(data, labels, batch_size)
    shown = (progress, _n_batches(data, batch_size))
    moments = _stream(net, list(modules), batches, dev or torch.device("cpu"), sample, shown)
    order = list(moments.state)  # forward order
    x, y = sample.tensors()
    x = x.to(_input_dtype(net))
    paired = [n for n in order if _has_pairs(modules[n])]
    overlaps = _cwnnk(net, paired, x, y, k, batch_size, progress)
    from convsim import __version__
    from convsim.nnk.options import NNKOptions

    return Analysis(
        layers=[_layer(i + 1, n, modules[n], moments, overlaps.get(n)) for i, n in enumerate(order)],
        n_inputs=sample.seen,
        n_samples=int(x.shape[0]),
        k=k,
        seed=seed,
        labels=y is not None,
        nnk=NNKOptions(k=k, duplicates="drop").summary(),
        convsim_version=__version__,
    )
