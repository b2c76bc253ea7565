r"""Baselines CS is compared with: kernel-orthogonality penalties and DeCov.

Every weight penalty takes one conv weight of shape (M, C, \*kernel) and returns a differentiable
0-dim tensor. :math:`W` is the weight reshaped to (M, D), D = C·prod(kernel), one row per filter,
and :math:`G` the *smaller* Gram (:math:`WW^\top` if M <= D, else :math:`W^\top W`, size n).

.. math::
    \mathrm{SO} = \|G - I_n\|_F^2,\quad
    \mathrm{DSO} = \|W^\top W - I_D\|_F^2 + \|WW^\top - I_M\|_F^2,\quad
    \mathrm{MC} = \|G - I_n\|_\infty,\quad
    \mathrm{SRIP} \approx \sigma_{\max}(G - I_n)

(Bansal et al. 2018); OCNN conv-orthogonality (Wang et al. 2020, with deel-lip's corrected
padding, offset and existence checks; any kernel size, forward or transposed weights); DeCov on
activations (Cogswell et al. 2016). :func:`layer_penalty` gives one layer's weight penalty (a
transposed conv's output filters for SO/DSO/MC/SRIP, its own weight and stride for OCNN) and
:class:`Penalty` sums one penalty over every selected conv layer of a model.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from convsim._internal.layers import AnyConvLayer, Predicate, filters, is_transposed, select_conv_layers

PENALTIES = ("so", "dso", "mc", "srip", "ocnn", "decov")  # the names Penalty takes (and `convsim train --penalty`)
CHECKS = ("error", "warn", "off")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}


def _check_weight(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"weight must be a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() < 3:
        raise ValueError(
            f"expected a conv weight of shape (M, C, *kernel) with at least 3 dims, got shape {tuple(weight.shape)}"
        )
    if not weight.is_floating_point():
        raise TypeError(f"weight must be a floating-point tensor, got {weight.dtype}")


def _small_gram(weight: torch.Tensor) -> torch.Tensor:
    """The smaller of :math:`WW^\\top` (M, M) and :math:`W^\\top W` (D, D) minus the identity."""
    w = weight.reshape(weight.shape[0], -1)
    gram = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
    return gram - torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)


def soft_orthogonality(weight: torch.Tensor) -> torch.Tensor:
    r"""Soft orthogonality :math:`\|G - I\|_F^2` with :math:`G` the smaller Gram of the (M, D) matrix.

    With M <= D this asks for orthonormal filters (kernel orthogonality with unit norms).

    Example:
        >>> w = torch.eye(4).reshape(4, 1, 2, 2)      # 4 orthonormal 2x2 filters
        >>> float(soft_orthogonality(w))
        0.0
    """
    _check_weight(weight)
    return _small_gram(weight).square().sum()


def double_soft_orthogonality(weight: torch.Tensor) -> torch.Tensor:
    r"""Double soft orthogonality :math:`\|W^\top W - I_D\|_F^2 + \|WW^\top - I_M\|_F^2`.

    Both Grams share their nonzero eigenvalues, so :math:`\|A-I_D\|_F^2 = \|B-I_M\|_F^2 + D - M`
    exactly (:math:`\|X\|_F^2` and the trace agree). DSO is therefore computed as
    :math:`2\,\mathrm{SO} + |D - M|` without forming the large Gram: for the Frobenius norm it is
    twice SO plus a constant.

    Example:
        >>> w = torch.eye(4).reshape(4, 1, 2, 2)
        >>> float(double_soft_orthogonality(w))
        0.0
    """
    _check_weight(weight)
    m, d = weight.shape[0], weight[0].numel()
    return 2 * _small_gram(weight).square().sum() + abs(d - m)


def mutual_coherence(weight: torch.Tensor) -> torch.Tensor:
    r"""Mutual coherence :math:`\|G - I\|_\infty = \max_{a,b} |(G - I)_{ab}|` (smaller Gram).

    Non-smooth: the gradient lands on one entry only.

    Example:
        >>> w = torch.tensor([[1.0, 0.0], [0.6, 0.8]]).reshape(2, 1, 2)
        >>> round(float(mutual_coherence(w)), 6)
        0.6
    """
    _check_weight(weight)
    return _small_gram(weight).abs().amax()


def srip(weight: torch.Tensor, iterations: int = 2, generator: torch.Generator | None = None) -> torch.Tensor:
    r"""SRIP: the spectral norm :math:`\sigma_{\max}(G - I)` of the smaller Gram, by power iteration.

    Estimate: :math:`v_0` is a random unit Gaussian vector (from ``generator``); each of the
    ``iterations`` steps computes :math:`u = (G-I)v` with two mat-vecs (the Gram is never formed)
    and sets :math:`v = u/\|u\|`; the result is :math:`\|u\|` of the last step. Since :math:`v` is a
    unit vector, the estimate is a **lower bound** on :math:`\sigma_{\max}` that converges to it as
    ``iterations`` grows (at the rate of the ratio of the two largest :math:`|\lambda|`). The
    default 2 matches Bansal et al.'s code, which returns the square of this value. Gradients flow
    through the whole iteration (as in the original); the random draw advances ``generator``.

    Example:
        >>> w = torch.randn(8, 3, 3, 3, dtype=torch.float64)
        >>> g = torch.Generator().manual_seed(0)
        >>> exact = torch.linalg.matrix_norm(w.flatten(1) @ w.flatten(1).T - torch.eye(8, dtype=w.dtype), 2)
        >>> bool(srip(w, 50, g) <= exact * (1 + 1e-12))
        True
    """
    _check_weight(weight)
    if not isinstance(iterations, int) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    w = weight.reshape(weight.shape[0], -1)
    if w.shape[0] > w.shape[1]:
        w = w.T  # now (n, D') with n the side of the smaller Gram G = w w^T
    device = generator.device if generator is not None else weight.device
    v = torch.randn(w.shape[0], 1, generator=generator, device=device, dtype=weight.dtype).to(weight.device)
    tiny = torch.finfo(weight.dtype).tiny
    v = v / v.norm().clamp_min(tiny)
    sigma = weight.new_zeros(())
    for _ in range(iterations):
        u = w @ (w.T @ v) - v
        sigma = u.norm()
        v = u / sigma.clamp_min(tiny)  # an exactly orthogonal W gives u = 0: keep v finite
    return sigma


def _tuple(value: int | Sequence[int], d: int, label: str) -> tuple[int, ...]:
    out = (value,) * d if isinstance(value, int) else tuple(value)
    if len(out) != d or not all(isinstance(v, int) and v >= 1 for v in out):
        raise ValueError(f"{label} must be an int >= 1 or {d} such ints, got {value!r}")
    return out


def ocnn_existence(
    shape: Sequence[int], stride: int | Sequence[int] = 1, *, transposed: bool = False
) -> list[tuple[str, str]]:
    r"""Problems that rule out (or hinder) an orthogonal conv of this weight shape (deel-lip's rules, any kernel).

    ``shape`` is one group's weight, (M, C, \*k) for a forward conv and (C_in, C_out, \*k) for a
    transposed one (``transposed=True``). Read it as a forward conv :math:`A` with :math:`a` =
    shape[0] output and :math:`b` = shape[1] input channels, :math:`S=\prod_a s_a`; a transposed
    conv is :math:`A^\top` (see :func:`ocnn`), so the same conditions decide, with "row" and
    "column" swapped.

    - :math:`a \le bS` (:math:`A` fat, row-orthogonal wanted): impossible when
      :math:`a > b\prod_a\min(k_a, s_a)`. Along an axis with :math:`k_a < s_a` only :math:`k_a`
      of the :math:`s_a` input phases are ever read, so :math:`A` has fewer nonzero columns than
      rows. (deel-lip's :math:`a > b\prod k` is the same rule when every :math:`k_a \le s_a` or
      every :math:`k_a \ge s_a`.)
    - :math:`a > bS` (:math:`A` tall, column-orthogonal wanted): impossible when some
      :math:`s_a > k_a`: input positions that no output reads are zero columns.

    Both rules are exact: otherwise an orthogonal conv exists (orthonormal rows or columns of the
    (a, b·S) reshape of a kernel cut to min(k, s) per axis). Returns a list of ``(level, message)``:
    ``"error"`` for the two impossible cases, ``"warning"`` when :math:`a = bS` ("hard to
    optimise"). Odd and even kernels are treated alike.

    Example:
        >>> ocnn_existence((3, 1, 1, 4), (2, 2))  # a 1x4 kernel reads 2 of the 4 input phases
        [('error', 'no row-orthogonal conv exists: M=3 > C*prod(min(k, s))=2')]
        >>> ocnn_existence((8, 4, 4, 4), 2, transposed=True)  # DCGAN-style 8 -> 4 upsampler, 4x4 stride 2
        []
    """
    a, b, kernel = shape[0], shape[1], tuple(shape[2:])
    s = _tuple(stride, len(kernel), "stride")
    ss, read = math.prod(s), math.prod(min(k, si) for k, si in zip(kernel, s, strict=True))
    # a/b are the forward reading's output/input channels; a transposed conv is its adjoint.
    rows, cols, na, nb = ("column", "row", "C_in", "C_out") if transposed else ("row", "column", "M", "C")
    what = "transposed conv" if transposed else "conv"
    problems = []
    if b * ss >= a:
        if a > b * read:
            problems.append(
                ("error", f"no {rows}-orthogonal {what} exists: {na}={a} > {nb}*prod(min(k, s))={b * read}")
            )
    elif any(si > ki for si, ki in zip(s, kernel, strict=True)):
        problems.append(("error", f"no {cols}-orthogonal {what} exists: stride {s} exceeds kernel {kernel}"))
    if b * ss == a:
        problems.append(("warning", f"{na} = {nb}*s^d = {a} (square case) is hard to optimise"))
    return problems


def ocnn(
    weight: torch.Tensor, stride: int | Sequence[int] = 1, *, transposed: bool = False, check: str = "error"
) -> torch.Tensor:
    r"""OCNN conv-orthogonality :math:`\|\mathrm{Conv}(K, K, P, s) - I_{r_0}\|_F^2 - \delta`, any kernel size.

    The weight is convolved with itself as a batch of M images with C channels, zero padding
    :math:`P_a=\lfloor(k_a-1)/s_a\rfloor s_a` on both sides of each axis and stride :math:`s`. Output
    index :math:`o` holds lag :math:`\ell = s\,o - P`, entry :math:`(i, j)` being
    :math:`R_{ij}[\ell]=\sum_c\sum_n K_{ic}[n]K_{jc}[n+\ell]`, at every
    :math:`\ell\in s\mathbb Z^d` with :math:`|\ell_a|\le P_a`; :math:`I_{r_0}` is the identity at
    lag 0, output index :math:`P/s`, the middle of the :math:`(2P/s+1)^d` output;
    :math:`\delta=\max(0, M - CS)`, :math:`S=\prod_a s_a` (deel-lip's ``LorthRegularizer``; OCNN's
    released code used padding 1 and an unsquared norm). Conv1d, 2d and 3d weights. For stride 1
    it equals 2 × channel-summed all-pairs CS + self terms (spec §5.6).

    **Derivation (why these P, identity position and δ, for odd and even kernels).** On a periodic
    domain of :math:`n=\prod_a N_a` positions (:math:`s_a \mid N_a`) the conv is the matrix
    :math:`(Ax)_i[t]=\sum_c\sum_n K_{ic}[n]\,x_c[st+n]`, from :math:`Cn` inputs to :math:`Mn/S`
    outputs. Its row Gram is block circulant,
    :math:`(AA^\top)_{(i,t),(j,t')}=R_{ij}[s(t-t')]`, so :math:`AA^\top=I` iff
    :math:`R_{ij}[s\tau]=\delta_{ij}\delta_{\tau 0}` for all :math:`\tau`. :math:`R` is an
    autocorrelation: it lives on :math:`|\ell_a|\le k_a-1`, a window of odd length
    :math:`2k_a-1` centred on lag 0 *whatever the parity of* :math:`k_a`, so the identity always
    sits at an integer position, lag 0; the kernel's own centre (a half-integer for even k) plays no
    part. The lags that matter are the multiples of :math:`s_a` in that window, and
    :math:`P_a` is the largest such multiple: padding :math:`P_a` keeps exactly them (padding 1,
    or any :math:`P_a` that is not a multiple of :math:`s_a`, reads other lags). For
    :math:`k = s` (block or "invertible downsampling" convs) :math:`P=0` and the loss is
    :math:`\|WW^\top-I\|^2` of the (M, C·S) reshape; for :math:`k=2s` (DCGAN's 4×4 stride 2),
    :math:`P=s` and the lags are :math:`-s, 0, s`. When :math:`N_a/s_a > 2P_a/s_a` the lags do not
    wrap around, each of the :math:`n/S` block rows holds every lag once, and
    :math:`\|AA^\top-I\|_F^2 = (n/S)\,L` with :math:`L` the first term above. Both Grams have the
    same trace and the same :math:`\mathrm{tr}(G^2)`, so
    :math:`\|A^\top A-I\|_F^2=\|AA^\top-I\|_F^2+n(C-M/S)`. Hence

    .. math::
        \mathrm{ocnn}(K) = L - \max(0, M - CS)
        = \tfrac{S}{n}\min\big(\|AA^\top-I\|_F^2,\ \|A^\top A-I\|_F^2\big) \ge 0,

    the smaller Gram's squared distance to the identity per output position: zero exactly when the
    conv is orthogonal (row-orthogonal if :math:`M\le CS`, column-orthogonal otherwise).

    **Transposed** (``transposed=True``): the weight is a ConvTranspose's (C_in, C_out, \*k) (one
    group). PyTorch's transposed conv is the adjoint of the forward conv with the same weight and
    stride (its padding and output padding only crop, a shift on the periodic domain), so its
    operator is :math:`T=A^\top` with :math:`A` the forward conv of this weight read as
    (M = C_in, C = C_out). :math:`TT^\top=A^\top A` and :math:`T^\top T=AA^\top`: the same two Grams,
    swapped, so the same formula on the raw weight applies: padding :math:`P_a`, identity at lag
    0, :math:`\delta=\max(0, C_{in}-C_{out}S)`, and the value is :math:`S/n` times the smaller
    Gram's distance, :math:`n/S` now being the number of *input* positions of :math:`T`. A
    transposed conv is column-orthogonal (an isometric upsampler, :math:`T^\top T=I`) when
    :math:`C_{in}\le C_{out}S` and row-orthogonal otherwise. (For SO-type penalties a transposed
    layer's filters are :func:`convsim._internal.layers.filters`; OCNN needs no regrouping.)

    Args:
        stride: the layer's stride, an int or one per spatial axis.
        transposed: the weight is a ConvTranspose weight (C_in, C_out, \*k); the value is the
            same formula, the existence checks read the shape as a transposed conv.
        check: what to do when :func:`ocnn_existence` finds a problem: ``"error"`` raises
            ``ValueError`` for impossible configurations and warns for the square case (deel-lip
            behaviour); ``"warn"`` only warns; ``"off"`` checks nothing.

    Example:
        >>> w = torch.zeros(2, 2, 3, 3); w[0, 0, 1, 1] = w[1, 1, 1, 1] = 1.0   # centre deltas
        >>> float(ocnn(w, check="off"))
        0.0
        >>> q = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64))[0]
        >>> haar = q.reshape(4, 1, 2, 2)   # 2x2 stride 2 with orthonormal rows: orthogonal, k even
        >>> float(ocnn(haar, 2, check="off")) < 1e-24
        True
        >>> float(ocnn(haar, 2, transposed=True, check="off")) < 1e-24   # its adjoint, 1 -> 4 upsampler
        True
    """
    _check_weight(weight)
    d = weight.dim() - 2
    if d not in _CONV:
        raise ValueError(f"OCNN supports Conv1d/2d/3d weights, got {d} spatial dims")
    s = _tuple(stride, d, "stride")
    if not isinstance(transposed, bool):
        raise TypeError(f"transposed must be a bool, got {type(transposed).__name__}")
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if check != "off":
        for level, msg in ocnn_existence(weight.shape, s, transposed=transposed):
            if level == "error" and check == "error":
                raise ValueError(msg)
            warnings.warn(f"OCNN: {msg}", stacklevel=2)
    kernel = weight.shape[2:]
    pad = [(k - 1) // si * si for k, si in zip(kernel, s, strict=True)]
    # F.pad wants the last axis first; only the input side is padded.
    padded = F.pad(weight, [p for p in reversed(pad) for _ in range(2)])
    out = _CONV[d](padded, weight, stride=s)  # (M, M, *o), o_a = 2*floor((k_a-1)/s_a)+1
    centre = (slice(None), slice(None)) + tuple(p // si for p, si in zip(pad, s, strict=True))  # lag 0
    m = weight.shape[0]
    target = torch.zeros_like(out)
    target[centre] = torch.eye(m, dtype=weight.dtype, device=weight.device)
    delta = max(0, m - weight.shape[1] * math.prod(s))
    return (out - target).square().sum() - delta


def decov(activations: torch.Tensor) -> torch.Tensor:
    r"""DeCov :math:`\tfrac12(\|\Sigma\|_F^2 - \|\mathrm{diag}\,\Sigma\|_2^2)` of activations.

    ``activations`` is (N, M, \*spatial) or (N, M); :math:`\Sigma` is the (M, M) channel covariance
    over the n = N·prod(spatial) positions, :math:`\Sigma=\frac1n\sum_p(h_p-\mu)(h_p-\mu)^\top`
    (biased, as Cogswell et al.). A single position gives 0.

    Example:
        >>> h = torch.tensor([[1.0, 1.0, 5.0], [-1.0, -1.0, 5.0]])  # (N=2, M=3): channel 1 copies 0, 2 is constant
        >>> float(decov(h))  # the covariance of channels 0 and 1 (1.0), counted once
        1.0
    """
    if not isinstance(activations, torch.Tensor):
        raise TypeError(f"activations must be a torch.Tensor, got {type(activations).__name__}")
    if activations.dim() < 2 or activations.shape[0] == 0:
        raise ValueError(
            f"expected activations of shape (N, M, *spatial) with N >= 1, got shape {tuple(activations.shape)}"
        )
    if not activations.is_floating_point():
        raise TypeError(f"activations must be a floating-point tensor, got {activations.dtype}")
    m = activations.shape[1]
    h = activations.transpose(0, 1).reshape(m, -1)
    h = h - h.mean(dim=1, keepdim=True)
    cov = h @ h.T / h.shape[1]
    return 0.5 * (cov.square().sum() - cov.diagonal().square().sum())


_WEIGHT_FUNCS = {
    "so": soft_orthogonality,
    "dso": double_soft_orthogonality,
    "mc": mutual_coherence,
    "srip": srip,
    "ocnn": ocnn,
}


def _group_weight_shape(module: AnyConvLayer) -> tuple[int, ...]:
    """One group's block of the raw weight: (M/g, C/g, *k) forward, (C_in/g, C_out/g, *k) transposed."""
    w = module.weight
    return (w.shape[0] // module.groups, *w.shape[1:])


def layer_penalty(module: AnyConvLayer, name: str, **options: Any) -> torch.Tensor:
    r"""Weight penalty ``name`` (one of SO, DSO, MC, SRIP, OCNN) of one conv layer, forward or transposed.

    Grouped layers are penalised group by group and the terms summed (the operator is block
    diagonal over groups). ``"so"``, ``"dso"``, ``"mc"`` and ``"srip"`` are about filters: they
    see :func:`convsim._internal.layers.filters`, the (C_out, C_in/groups, \*k) output filters,
    which for a transposed conv regroups its (C_in, C_out/groups, \*k) weight. ``"ocnn"`` is
    about the layer's operator: it gets the raw weight, the layer's stride and
    ``transposed=True`` for a ConvTranspose (see :func:`ocnn`), one block of C_out/groups
    (forward) or C_in/groups (transposed) weight rows per group. ``options`` go to the function
    (e.g. ``check`` for OCNN, ``iterations``/``generator`` for SRIP). The layer's dilation is not
    taken into account.

    Example:
        >>> up = nn.ConvTranspose2d(4, 2, 4, stride=2, bias=False)     # a DCGAN-style upsampler
        >>> bool(layer_penalty(up, "so") == soft_orthogonality(up.weight.transpose(0, 1)))
        True
        >>> bool(layer_penalty(up, "ocnn") == ocnn(up.weight, 2, transposed=True))
        True
    """
    if name not in _WEIGHT_FUNCS:
        raise ValueError(f"name must be one of {tuple(_WEIGHT_FUNCS)}, got {name!r}")
    fn, g = _WEIGHT_FUNCS[name], module.groups
    if name == "ocnn":
        w, options = module.weight, {**options, "stride": module.stride, "transposed": is_transposed(module)}
    else:
        w = filters(module)
    m = w.shape[0] // g
    return torch.stack([fn(w[k * m : (k + 1) * m], **options) for k in range(g)]).sum()


def _check_ocnn_layers(selected: Sequence[tuple[str, AnyConvLayer]], check: str) -> None:
    """Run :func:`ocnn_existence` once per layer (its own stride, forward or transposed)."""
    if check not in CHECKS:
        raise ValueError(f"check must be one of {CHECKS}, got {check!r}")
    if check == "off":
        return
    for lname, module in selected:
        for level, msg in ocnn_existence(_group_weight_shape(module), module.stride, transposed=is_transposed(module)):
            if check == "error" and level == "error":
                raise ValueError(f"layer {lname!r}: {msg}")
            warnings.warn(f"OCNN layer {lname!r}: {msg}", stacklevel=3)


class Penalty(nn.Module):
    r"""A baseline regulariser of a model: ``reg()`` returns ``beta`` × the sum over selected layers.

    ``beta`` is the regularisation strength, as in :class:`~convsim.similarity.ConvSimilarity`
    (``convsim train --penalty-beta``).

    Layers are chosen by :func:`convsim._internal.layers.select_conv_layers` (the same rule as
    :class:`~convsim.similarity.ConvSimilarity`); each weight penalty is :func:`layer_penalty` of
    the layer, so transposed convs, once selected, are handled: SO/DSO/MC/SRIP on their output
    filters, OCNN on their operator. Grouped convs are penalised per group (the layer's operator is
    block diagonal, so cross-group pairs act on disjoint inputs) and the group terms are summed.
    ``options`` go to the penalty function (e.g. ``iterations``/``generator`` for ``"srip"``); for
    ``"ocnn"`` every layer's own stride is used and the existence checks run once here, as
    warnings by default (``check="warn"``; pass ``check="error"`` for deel-lip's errors).

    ``"decov"`` is data dependent: forward hooks on the selected layers keep the latest output of
    each (not detached, so the penalty backpropagates into the model), and ``reg()``, called after
    the model's forward, returns DeCov of those outputs. It holds one output per layer until the
    next forward; ``remove()`` (or leaving a ``with`` block) removes the hooks. A layer called twice
    in one forward contributes its last call.

    The model's parameters are not registered as this module's; it works on a
    DistributedDataParallel model (layers are found on the wrapped module).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
        >>> reg = Penalty(net, "so", beta=1e-3)
        >>> reg.layers
        ['0', '2']
        >>> bool(torch.isclose(reg(), 1e-3 * (soft_orthogonality(net[0].weight) + soft_orthogonality(net[2].weight))))
        True
        >>> x = torch.randn(2, 1, 8, 8)
        >>> with Penalty(net, "decov") as dec:
        ...     _ = net(x)  # the hooks keep each selected layer's output
        ...     value = dec()
        >>> h = net[0](x)
        >>> bool(torch.isclose(value, decov(h) + decov(net[2](net[1](h)))))
        True
    """

    def __init__(
        self,
        model: nn.Module,
        name: str,
        *,
        beta: float = 1.0,
        include: Predicate | None = None,
        exclude: Predicate | None = None,
        **options: Any,
    ):
        super().__init__()
        if name not in PENALTIES:
            raise ValueError(f"name must be one of {PENALTIES}, got {name!r}")
        selected = select_conv_layers(model, include, exclude)
        if not selected:
            raise ValueError("no conv layer with at least 2 output channels per group was selected in the model")
        if name == "decov" and options:
            raise TypeError(f"decov takes no options, got {sorted(options)}")
        if name == "ocnn":
            _check_ocnn_layers(selected, options.pop("check", "warn"))
            options["check"] = "off"  # checked once above, not on every step
        self.name = name
        self.beta = float(beta)
        self.options = options
        # A plain list: the model's parameters must not become this module's parameters.
        self._selected: list[tuple[str, AnyConvLayer]] = list(selected)
        self._outputs: dict[str, torch.Tensor] = {}
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        if name == "decov":
            for lname, module in selected:
                self._handles.append(module.register_forward_hook(self._make_hook(lname)))

    def _make_hook(self, lname: str) -> Callable[[nn.Module, tuple, torch.Tensor], None]:
        def hook(_module: nn.Module, _inputs: tuple, output: torch.Tensor) -> None:
            self._outputs[lname] = output

        return hook

    @property
    def layers(self) -> list[str]:
        return [name for name, _ in self._selected]

    def _layer_value(self, lname: str, module: AnyConvLayer) -> torch.Tensor:
        if self.name == "decov":
            if lname not in self._outputs:
                raise RuntimeError(
                    f"decov needs the model's forward first: no output of layer {lname!r} was captured"
                    + (" (hooks were removed)" if not self._handles else "")
                )
            return decov(self._outputs[lname])
        return layer_penalty(module, self.name, **self.options)

    def per_layer(self) -> dict[str, torch.Tensor]:
        """Unweighted penalty of every selected layer, name -> 0-dim tensor."""
        return {lname: self._layer_value(lname, module) for lname, module in self._selected}

    def forward(self) -> torch.Tensor:
        return self.beta * torch.stack(list(self.per_layer().values())).sum()

    def remove(self) -> None:
        """Remove the forward hooks (``"decov"``) and drop the captured outputs."""
        for h in self._handles:
            h.remove()
        self._handles = []
        self._outputs = {}

    def __enter__(self) -> Penalty:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, beta={self.beta}, layers={len(self._selected)}"
