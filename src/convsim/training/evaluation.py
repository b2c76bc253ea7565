r"""What the trainer measures on a model: accuracy and loss (:func:`evaluate`), redundancy (:func:`measure_redundancy`).

Both run the model in eval mode (:func:`convsim._internal.modes.eval_mode`: its train/eval
modes are restored afterwards) and track no gradients. :func:`evaluate` is the pass behind the
test metrics and validation early stopping; :func:`measure_redundancy` gives the CS and
feature-map similarity logged every epoch (built on the library's :mod:`convsim.measure`).
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convsim._internal.layers import filters
from convsim._internal.modes import eval_mode
from convsim.training import distributed
from convsim.training.config import TrainConfig
from convsim.training.distributed import DistEnv


def autocast_context(config: TrainConfig, device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast on ``device`` when ``config.bf16``, else a context that does nothing."""
    if config.bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


@torch.no_grad()
def evaluate(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, config: TrainConfig, env: DistEnv, prefix: str = "test"
) -> dict[str, float]:
    r"""Mean cross-entropy and accuracy of ``model`` (eval mode) on ``(x, y)``: ``{prefix_loss, prefix_acc}``.

    ``x`` is (N, C, H, W), ``y`` (N,) class indices; the loss is
    :math:`\tfrac1N\sum_i \mathrm{CE}(f(x_i), y_i)`, the accuracy the share of
    :math:`\arg\max f(x_i) = y_i`, both over chunks of ``config.eval_batch`` images. Under DDP
    each rank evaluates ``x[rank::world]`` of the *unwrapped* model (no collective per forward)
    and the sums are reduced over ranks. The model's train/eval modes are restored.

    Example:
        >>> from convsim.models import build
        >>> model = build("cnn1", input_size=20)
        >>> res = evaluate(model, torch.randn(8, 1, 20, 20), torch.arange(8), TrainConfig(), DistEnv())
        >>> sorted(res), 0.0 <= res["test_acc"] <= 1.0
        (['test_acc', 'test_loss'], True)
    """
    idx = distributed.shard(torch.arange(len(y), device=y.device), env)
    sums = torch.zeros(3, dtype=torch.float64, device=y.device)
    with eval_mode(model), autocast_context(config, y.device):
        for chunk in torch.split(idx, config.eval_batch):
            logits = model(x[chunk]).float()
            sums[0] += F.cross_entropy(logits, y[chunk], reduction="sum").double()
            sums[1] += (logits.argmax(1) == y[chunk]).sum()
            sums[2] += len(chunk)
    loss, correct, count = distributed.all_reduce_sum(sums, env).tolist()
    return {f"{prefix}_loss": loss / count, f"{prefix}_acc": correct / count}


@torch.no_grad()
def measure_redundancy(model: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    """Redundancy measurements of ``model`` (eval mode, fp32) on the fixed batch ``x``.

    * ``cs``: all-pairs per-channel CS (unnormalised, unweighted) summed over every conv layer;
    * ``kernel_cosine``: mean :math:`|\\cos|` between flattened filters, averaged over layers;
    * ``fm_similarity`` / ``fm_similarity_centered``: mean :math:`|\\cos|` between the feature
      maps of distinct channels on ``x``, uncentred / centred, averaged over layers;
    * ``fm_effective_rank``: mean effective rank of the layers' feature maps (uncentred);
    * ``cs_normalized``: the scale-invariant CS (unit-norm filters), summed over conv layers;
    * ``kernel_norm``: ``{layer: mean L2 norm of its filters}``. CS is quartic in the weights, so
      beside ``cs_normalized`` this tells shrinking kernels from decorrelating ones.

    Values come from :class:`convsim.measure.FeatureMapSimilarity` (layers averaged by
    :func:`convsim.measure.summarize`) and :class:`convsim.similarity.ConvSimilarity`. ``x`` is
    (N, C, H, W) with N >= 2; every value is a python float.

    Example:
        >>> from convsim.models import build
        >>> result = measure_redundancy(build("cnn1", input_size=20), torch.randn(4, 1, 20, 20))
        >>> sorted(result)  # doctest: +NORMALIZE_WHITESPACE
        ['cs', 'cs_normalized', 'fm_effective_rank', 'fm_similarity', 'fm_similarity_centered',
         'kernel_cosine', 'kernel_norm']
    """
    from convsim.measure import FeatureMapSimilarity, summarize
    from convsim.similarity import ConvSimilarity

    with eval_mode(model):
        cs = ConvSimilarity(model, beta=1.0, pairs="all", channels="per_channel")
        result: dict[str, Any] = {"cs": float(cs()), "cs_normalized": float(ConvSimilarity(model, normalize=True)())}
        modules = dict(model.named_modules())
        result["kernel_norm"] = {
            name: float(filters(modules[name]).detach().flatten(1).norm(dim=1).mean()) for name in cs.layers
        }
        for centered in (False, True):
            metric = FeatureMapSimilarity(model, centered=centered, sync_on_compute=False)  # rank 0 alone measures
            metric.update(x)
            s = summarize(metric.compute())
            if centered:
                result["fm_similarity_centered"] = float(s["fm_abs_cos"])
            else:
                result.update(
                    kernel_cosine=float(s["kernel_abs_cos"]),
                    fm_similarity=float(s["fm_abs_cos"]),
                    fm_effective_rank=float(s["fm_effective_rank"]),
                )
    return result
