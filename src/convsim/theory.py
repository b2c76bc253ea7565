r"""The feature-map / kernel identity, executable (spec §3–§4, §11).

For a bias-free conv layer with filters :math:`K_i\in\mathbb R^{C\times k}` (any number of spatial
axes) and input :math:`X\in\mathbb R^{C\times S}`, the pre-activation maps
:math:`F_i=\sum_c X_c\star K_{ic}` satisfy, for full (zero) padding,

.. math::
    \langle F_i, F_j\rangle = \sum_{c,d}\big\langle K_{ic}\circledast K_{jd},\ (R_{cd})_{\Lambda}\big\rangle,
    \qquad R_{cd}[\ell]=\sum_t X_c[t]\,X_d[t+\ell],

with :math:`(a\circledast b)[\ell]=\sum_n a[n]\,b[n+\ell]` the full cross-correlation and
:math:`\Lambda=\prod_a\{1-k_a,\dots,k_a-1\}` the kernels' lag window. With circular padding the same
holds with the circular :math:`R` (lags modulo the input size); with ``same``/``valid`` padding it
is approximate (boundary terms are missing). A batch sums both sides over its samples.

Outside the theory: stride (a subsample of the stride-1 map), bias, nonlinearities, BatchNorm and
pooling. Dilation samples :math:`R` at multiples of the dilation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from convsim.similarity import conv_similarity

PADDINGS = ("full", "circular", "same", "valid")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _check(x: torch.Tensor, weight: torch.Tensor, padding: str, allowed: tuple[str, ...] = PADDINGS) -> torch.Tensor:
    """Validate and return x as (N, C, *spatial)."""
    for t, label in ((x, "x"), (weight, "weight")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{label} must be a floating-point tensor, got {t.dtype}")
    d = weight.dim() - 2
    if d not in _CONV:
        raise ValueError(f"weight must be (M, C, *kernel) with 1 to 3 spatial dims, got shape {tuple(weight.shape)}")
    if x.dim() == d + 1:
        x = x.unsqueeze(0)
    if x.dim() != d + 2 or x.shape[1] != weight.shape[1]:
        raise ValueError(
            f"x must be (C, *spatial) or (N, C, *spatial) with C={weight.shape[1]} and {d} spatial dims, "
            f"got shape {tuple(x.shape)}"
        )
    if padding not in allowed:
        raise ValueError(f"padding must be one of {allowed}, got {padding!r}")
    kernel, spatial = weight.shape[2:], x.shape[2:]
    if padding == "same" and any(k % 2 == 0 for k in kernel):
        raise ValueError(f"padding='same' needs odd kernels, got kernel {tuple(kernel)}")
    if padding == "valid" and any(s < k for s, k in zip(spatial, kernel, strict=True)):
        raise ValueError(
            f"padding='valid' needs the input {tuple(spatial)} at least as large as the kernel {tuple(kernel)}"
        )
    return x


def _circular_pad(x: torch.Tensor, pads: list[int]) -> torch.Tensor:
    """Pad every spatial axis of (N, C, *spatial) by ``pads[a]`` on both sides with wrap-around.

    Indexing modulo the size also works when the pad exceeds the input (where ``F.pad`` refuses).
    """
    for a, p in enumerate(pads):
        axis = 2 + a
        size = x.shape[axis]
        idx = torch.arange(-p, size + p, device=x.device) % size
        x = x.index_select(axis, idx)
    return x


def feature_maps(x: torch.Tensor, weight: torch.Tensor, padding: str = "full") -> torch.Tensor:
    """Bias-free pre-activation feature maps (N, M, \\*out) of a stride-1 conv layer.

    ``padding``: ``"full"`` (k-1 zeros per side, output S+k-1), ``"circular"`` (wrap-around,
    output S: :math:`F_i[t]=\\sum_n K_i[n]X[(t+n) \\bmod S]`), ``"same"`` ((k-1)/2 zeros, odd kernels)
    or ``"valid"`` (no padding, output S-k+1). x is (C, \\*spatial) or (N, C, \\*spatial).

    Example:
        >>> feature_maps(torch.ones(1, 5), torch.ones(2, 1, 3), "full").shape
        torch.Size([1, 2, 7])
    """
    x = _check(x, weight, padding)
    kernel = list(weight.shape[2:])
    conv = _CONV[weight.dim() - 2]
    if padding == "circular":
        # wrap k-1 samples on the right only: output t sees X[t .. t+k-1] modulo S
        for a, k in enumerate(kernel):
            axis = 2 + a
            size = x.shape[axis]
            x = x.index_select(axis, torch.arange(0, size + k - 1, device=x.device) % size)
        return conv(x, weight)
    pad = {"full": [k - 1 for k in kernel], "same": [(k - 1) // 2 for k in kernel], "valid": [0] * len(kernel)}
    return conv(x, weight, padding=pad[padding])


def feature_map_gram(x: torch.Tensor, weight: torch.Tensor, padding: str = "full") -> torch.Tensor:
    r"""(M, M) inner products :math:`\sum_n\langle F_{ni}, F_{nj}\rangle` of the bias-free feature maps.

    Computed by running the convolution (:func:`feature_maps`); x is (C, \*spatial) or
    (N, C, \*spatial) and the batch is summed.

    Example:
        >>> x, w = torch.randn(3, 16, 16, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
        >>> torch.allclose(feature_map_gram(x, w), predicted_feature_map_gram(x, w))
        True
    """
    f = feature_maps(x, weight, padding)
    f = f.flatten(2)
    return torch.einsum("nip,njp->ij", f, f)


def kernel_cross_correlations(weight: torch.Tensor) -> torch.Tensor:
    r"""All full cross-correlations :math:`(K_{ic}\circledast K_{jd})[\ell]`: shape (M, M, C, C, \*(2k-1)).

    Entry ``[i, j, c, d, l]`` is lag :math:`\ell = l - (k-1)` per axis. Memory
    :math:`(MC)^2\prod_a(2k_a-1)`: meant for checking the theory on small layers.

    Example:
        >>> w = torch.tensor([[[1.0, 0.0, 0.0]], [[0.0, 1.0, 0.0]]])
        >>> kernel_cross_correlations(w)[0, 1, 0, 0]   # one spike at lag +1
        tensor([0., 0., 0., 1., 0.])
    """
    if not isinstance(weight, torch.Tensor) or weight.dim() - 2 not in _CONV:
        raise ValueError("weight must be a tensor of shape (M, C, *kernel) with 1 to 3 spatial dims")
    m, c, kernel = weight.shape[0], weight.shape[1], list(weight.shape[2:])
    slices = weight.reshape(m * c, 1, *kernel)
    # batch b = (j, d) correlated with filter o = (i, c): out[b, o, y] = sum_n K_ic[n] K_jd[n + y - (k-1)]
    out = _CONV[len(kernel)](slices, slices, padding=[k - 1 for k in kernel])
    lags = out.shape[2:]
    return out.reshape(m, c, m, c, *lags).permute(2, 0, 3, 1, *range(4, 4 + len(kernel)))


def input_correlations(x: torch.Tensor, kernel_size: int | Sequence[int], circular: bool = False) -> torch.Tensor:
    r"""Input auto/cross-correlations :math:`R_{cd}[\ell]` on the lag window: (C, C, \*(2k-1)).

    :math:`R_{cd}[\ell]=\sum_n\sum_t X_{nc}[t]\,X_{nd}[t+\ell]` for :math:`|\ell_a|\le k_a-1`
    (entry ``[c, d, l]`` is lag ``l - (k-1)``), zero outside the input for the linear version,
    lags modulo the input size for ``circular=True``. x is (N, C, \*spatial); ``kernel_size`` an
    int (every axis) or one per spatial axis. Computed directly by correlating the input with
    itself (no FFT).

    Example:
        >>> r = input_correlations(torch.tensor([[[1.0, 2.0, 3.0]]]), 2)
        >>> r[0, 0]                                   # lags -1, 0, +1
        tensor([ 8., 14.,  8.])
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    d = x.dim() - 2
    if d not in _CONV:
        raise ValueError(f"x must be (N, C, *spatial) with 1 to 3 spatial dims, got shape {tuple(x.shape)}")
    kernel = [kernel_size] * d if isinstance(kernel_size, int) else list(kernel_size)
    if len(kernel) != d or any(not isinstance(k, int) or k < 1 for k in kernel):
        raise ValueError(f"kernel_size must be a positive int or {d} of them, got {kernel_size!r}")
    pads = [k - 1 for k in kernel]
    xt = x.transpose(0, 1)  # (C, N, *S): channel d as the batch, samples as conv channels
    inp = _circular_pad(xt, pads) if circular else F.pad(xt, [p for p in reversed(pads) for _ in range(2)])
    out = _CONV[d](inp, xt)  # out[d, c, y] = sum_n sum_t X_nc[t] X_nd[t + y - (k-1)] = R_cd[y - (k-1)]
    return out.transpose(0, 1)


def predicted_feature_map_gram(x: torch.Tensor, weight: torch.Tensor, padding: str = "full") -> torch.Tensor:
    r"""The (M, M) feature-map Gram predicted from kernel and input correlations only (spec §3.5).

    .. math::
        G_{ij}=\sum_{c,d}\big\langle K_{ic}\circledast K_{jd},\ (R_{cd})_{\Lambda}\big\rangle

    from :func:`kernel_cross_correlations` and :func:`input_correlations` (circular :math:`R` for
    ``padding="circular"``); x is never convolved with the weight. Exact (to rounding) for
    ``"full"`` and ``"circular"``; compare ``same``/``valid`` maps with the ``"full"`` prediction
    to see the boundary error (:func:`identity_error`).

    Example:
        >>> x, w = torch.randn(2, 32, dtype=torch.float64), torch.randn(3, 2, 5, dtype=torch.float64)
        >>> torch.allclose(predicted_feature_map_gram(x, w, "circular"), feature_map_gram(x, w, "circular"))
        True
    """
    x = _check(x, weight, padding, allowed=("full", "circular"))
    kk = kernel_cross_correlations(weight).flatten(4)
    r = input_correlations(x, list(weight.shape[2:]), circular=padding == "circular").flatten(2)
    return torch.einsum("ijcdl,cdl->ij", kk, r)


def identity_error(x: torch.Tensor, weight: torch.Tensor, padding: str = "full") -> torch.Tensor:
    r"""Relative error :math:`\|G-\hat G\|_F/\|G\|_F` of the identity for maps with ``padding``.

    :math:`G` = :func:`feature_map_gram` with ``padding``; :math:`\hat G` =
    :func:`predicted_feature_map_gram` with circular :math:`R` for ``"circular"`` and the linear
    :math:`R` otherwise. Rounding level for full/circular; the boundary error for same/valid.

    Example:
        >>> x, w = torch.randn(64, dtype=torch.float64)[None], torch.rand(2, 1, 9, dtype=torch.float64)
        >>> bool(identity_error(x, w, "full") < 1e-12)
        True
    """
    g = feature_map_gram(x, weight, padding)
    pred = predicted_feature_map_gram(x, weight, "circular" if padding == "circular" else "full")
    return (g - pred).norm() / g.norm().clamp_min(torch.finfo(g.dtype).tiny)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine along the last axis; 0 where a vector is zero."""
    tiny = torch.finfo(a.dtype).tiny
    return (a * b).sum(-1) / (a.norm(dim=-1) * b.norm(dim=-1)).clamp_min(tiny)


def shifted_delta_counterexample(x1d: torch.Tensor) -> dict[str, torch.Tensor]:
    r"""Orthogonal kernels, correlated maps: :math:`K_1=(1,0,0)`, :math:`K_2=(0,1,0)` (spec §4.3).

    :math:`\langle K_1,K_2\rangle=0` but :math:`K_1\circledast K_2` is a spike at lag +1, so with
    full padding the maps are the input and the input shifted by one sample and
    :math:`\cos(F_1,F_2)=R_X[1]/R_X[0]` exactly. Returns 0-dim tensors ``kernel_inner_product``,
    ``fm_cosine`` (from the maps) and ``autocorr_ratio`` (:math:`R_X[1]/R_X[0]` from the input).

    Example:
        >>> out = shifted_delta_counterexample(torch.randn(100, dtype=torch.float64))
        >>> bool(torch.isclose(out["fm_cosine"], out["autocorr_ratio"]))
        True
    """
    if not isinstance(x1d, torch.Tensor) or x1d.dim() != 1 or not x1d.is_floating_point() or x1d.numel() < 2:
        raise ValueError("x1d must be a 1-D floating-point tensor with at least 2 samples")
    if not bool((x1d != 0).any()):
        raise ValueError("x1d must not be all zeros (R_X[0] = 0)")
    w = torch.zeros(2, 1, 3, dtype=x1d.dtype, device=x1d.device)
    w[0, 0, 0] = w[1, 0, 1] = 1.0
    f = feature_maps(x1d[None], w, "full")[0]
    return {
        "kernel_inner_product": (w[0] * w[1]).sum(),
        "fm_cosine": _cosine(f[0], f[1]),
        "autocorr_ratio": (x1d[:-1] * x1d[1:]).sum() / x1d.square().sum(),
    }


def smooth_signal(
    length: int,
    box: int = 8,
    generator: torch.Generator | None = None,
    batch: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Smooth zero-mean 1-D input: Gaussian noise low-pass filtered by a length-``box`` moving average.

    The valid moving average of ``length + box - 1`` noise samples, minus its own mean. Shape
    (length,) or (batch, length).

    Example:
        >>> s = smooth_signal(64, generator=torch.Generator().manual_seed(0))
        >>> abs(float(s.mean())) < 1e-12
        True
    """
    if length < 1 or box < 1:
        raise ValueError(f"length and box must be >= 1, got {length}, {box}")
    shape = (1 if batch is None else batch, 1, length + box - 1)
    noise = torch.randn(*shape, generator=generator, dtype=dtype)
    out = F.conv1d(noise, torch.full((1, 1, box), 1.0 / box, dtype=dtype))[:, 0]
    out = out - out.mean(dim=-1, keepdim=True)
    return out[0] if batch is None else out


def _valid_maps(kernels: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(S, 2, L-k+1) valid maps of kernels (S, 2, k) over inputs (S, L), one input per seed."""
    windows = x.unfold(1, kernels.shape[-1], 1)  # (S, T, k)
    return torch.einsum("sin,stn->sit", kernels, windows)


def _toy_metrics(kernels: torch.Tensor, inputs: dict[str, torch.Tensor]) -> dict:
    f = {name: _valid_maps(kernels, x) for name, x in inputs.items()}
    out = {
        "kernel_cos": _cosine(kernels[:, 0], kernels[:, 1]),
        "kernel_norms": kernels.norm(dim=-1),  # (S, 2)
    }
    for name, maps in f.items():
        out[f"{name}_fm_abs_cos"] = _cosine(maps[:, 0], maps[:, 1]).abs()
        relu = maps.clamp_min(0)
        out[f"{name}_fm_cos_relu"] = _cosine(relu[:, 0], relu[:, 1])
    return out


def toy_comparison(
    seeds: int = 20,
    steps: int = 300,
    *,
    length: int = 64,
    kernel_size: int = 9,
    ortho_lr: float = 0.1,
    cs_lr: float = 0.01,
    box: int = 8,
    seed: int = 0,
) -> dict:
    r"""Kernel orthogonality vs CS on two 1-D kernels (spec §11 / §12.4), float64, seeded.

    Per seed ``seed + s``: :math:`K_1,K_2\sim U[0,1)^{k}`, a uniform input :math:`U[0,1)^{L}` and a
    smooth zero-mean input (:func:`smooth_signal`); feature maps are ``valid`` correlations
    (length L-k+1). "orthogonality" minimises :math:`\cos(K_1,K_2)^2` (SGD, ``ortho_lr``);
    "cs" minimises :math:`\mathrm{CS}(K_1,K_2)=\sum_{b}(\sum_j K_1[j]K_2[j+b])^2` through
    :func:`~convsim.similarity.conv_similarity` (SGD, ``cs_lr``), both for ``steps`` steps. The
    objectives do not see the input, so every seed runs each optimisation once and is measured on
    both inputs. All seeds run as one batch: the summed loss has per-seed gradients, so plain SGD
    updates each seed exactly as a separate run would.

    Returns a JSON-ready dict of Python floats: ``config`` and ``rows``, one row per
    (input, objective) with the means over seeds of ``kernel_cos_before``/``_after`` (signed),
    ``fm_abs_cos_before``/``_after``, the median ``fm_abs_cos_after_median``,
    ``fm_cos_relu_after`` (cosine of the ReLU'd maps) and ``kernel_norms_before``/``_after``
    (two means).

    Example:
        >>> rows = toy_comparison(seeds=2, steps=10)["rows"]
        >>> [(r["input"], r["objective"]) for r in rows][:2]
        [('uniform', 'orthogonality'), ('uniform', 'cs')]
    """
    for v, label in ((seeds, "seeds"), (steps, "steps"), (length, "length"), (kernel_size, "kernel_size")):
        if not isinstance(v, int) or v < (0 if label == "steps" else 1):
            raise ValueError(f"{label} must be a positive int, got {v!r}")
    if kernel_size > length:
        raise ValueError(f"kernel_size {kernel_size} exceeds length {length}")
    kernels, uniform, smooth = [], [], []
    for s in range(seeds):
        g = torch.Generator().manual_seed(seed + s)
        kernels.append(torch.rand(2, kernel_size, generator=g, dtype=torch.float64))
        uniform.append(torch.rand(length, generator=g, dtype=torch.float64))
        smooth.append(smooth_signal(length, box, generator=g))
    k0 = torch.stack(kernels)
    inputs = {"uniform": torch.stack(uniform), "smooth": torch.stack(smooth)}

    def optimise(loss_fn: Callable[[torch.Tensor], torch.Tensor], lr: float) -> torch.Tensor:
        # plain SGD (no momentum, no weight decay) written out: torch.optim's first step imports
        # torch._dynamo, which costs seconds for a sub-second experiment
        k = k0.clone().requires_grad_()
        for _ in range(steps):
            (grad,) = torch.autograd.grad(loss_fn(k), k)
            with torch.no_grad():
                k -= lr * grad
        return k.detach()

    finals = {
        "orthogonality": optimise(lambda k: _cosine(k[:, 0], k[:, 1]).square().sum(), ortho_lr),
        # seeds as input channels of one (2, seeds, k) weight: per-channel CS is then exactly the
        # sum over seeds of each seed's single-pair CS
        "cs": optimise(lambda k: conv_similarity(k.transpose(0, 1)), cs_lr),
    }
    before = _toy_metrics(k0, inputs)
    after = {name: _toy_metrics(k, inputs) for name, k in finals.items()}
    rows = []
    for inp in inputs:
        for obj in finals:
            a = after[obj]
            rows.append(
                {
                    "input": inp,
                    "objective": obj,
                    "kernel_cos_before": before["kernel_cos"].mean().item(),
                    "kernel_cos_after": a["kernel_cos"].mean().item(),
                    "fm_abs_cos_before": before[f"{inp}_fm_abs_cos"].mean().item(),
                    "fm_abs_cos_after": a[f"{inp}_fm_abs_cos"].mean().item(),
                    "fm_abs_cos_after_median": a[f"{inp}_fm_abs_cos"].quantile(0.5).item(),
                    "fm_cos_relu_after": a[f"{inp}_fm_cos_relu"].mean().item(),
                    "kernel_norms_before": before["kernel_norms"].mean(0).tolist(),
                    "kernel_norms_after": a["kernel_norms"].mean(0).tolist(),
                }
            )
    config = dict(
        seeds=seeds,
        steps=steps,
        length=length,
        kernel_size=kernel_size,
        ortho_lr=ortho_lr,
        cs_lr=cs_lr,
        box=box,
        seed=seed,
    )
    return {"config": config, "rows": rows}
