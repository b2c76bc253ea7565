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

Strided and transposed convolutions (issue 10) are exact too, with polyphase correlations.
With stride :math:`s` (per axis), congruences :math:`\equiv` taken modulo :math:`s` per axis and
full padding (k-1 zeros per side), a forward conv gives

.. math::
    \langle F_i, F_j\rangle = \sum_{c,d}\sum_\varphi\sum_\ell R^\varphi_{cd}[\ell]\,P^{\varphi+k-1}_{ic,jd}[\ell],
    \quad R^\varphi_{cd}[\ell]=\sum_{t\equiv\varphi}X_c[t]\,X_d[t+\ell],
    \quad P^\psi_{ic,jd}[\ell]=\sum_{n\equiv\psi}K_{ic}[n]\,K_{jd}[n+\ell].

A transposed conv (weight :math:`W` of shape (C, M, \*k), padding 0, so the whole output) convolves
the zero-inserted input :math:`u_c=\mathrm{up}_s(X_c)` with :math:`W[c,i]`, and

.. math::
    \langle F_i, F_j\rangle = \sum_{c,d}\sum_\ell (W[c,i]\circledast W[d,j])[\ell]\;R^u_{cd}[-\ell],
    \qquad R^u_{cd}[s m] = R_{cd}[m],\ R^u_{cd}[\ell]=0 \text{ unless } \ell\in s\mathbb Z,

so only the lags on the lattice :math:`s\mathbb Z` of the kernel cross-correlations meet the data.

Outside the theory: bias, nonlinearities, BatchNorm and pooling. Dilation samples :math:`R` at
multiples of the dilation.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from convsim.similarity import conv_similarity, per_axis_stride, phase_masks

PADDINGS = ("full", "circular", "same", "valid")
_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_TRANSPOSE = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


def _check(
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: str,
    allowed: tuple[str, ...] = PADDINGS,
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
) -> tuple[torch.Tensor, tuple[int, ...]]:
    """Validate; return x as (N, C, *spatial) and the stride per spatial axis."""
    for t, label in ((x, "x"), (weight, "weight")):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{label} must be a torch.Tensor, got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{label} must be a floating-point tensor, got {t.dtype}")
    if not isinstance(transposed, bool):
        raise TypeError(f"transposed must be a bool, got {type(transposed).__name__}")
    layout = "(C, M, *kernel)" if transposed else "(M, C, *kernel)"
    d = weight.dim() - 2
    if d not in _CONV:
        raise ValueError(f"weight must be {layout} with 1 to 3 spatial dims, got shape {tuple(weight.shape)}")
    strides = per_axis_stride(stride, d)
    channels = weight.shape[0] if transposed else weight.shape[1]
    if x.dim() == d + 1:
        x = x.unsqueeze(0)
    if x.dim() != d + 2 or x.shape[1] != channels:
        raise ValueError(
            f"x must be (C, *spatial) or (N, C, *spatial) with C={channels} and {d} spatial dims, "
            f"got shape {tuple(x.shape)}"
        )
    if padding not in allowed:
        raise ValueError(f"padding must be one of {allowed}, got {padding!r}")
    if (transposed or strides != (1,) * d) and padding != "full":
        raise ValueError(f"a strided or transposed conv supports padding='full' only, got {padding!r}")
    kernel, spatial = weight.shape[2:], x.shape[2:]
    if padding == "same" and any(k % 2 == 0 for k in kernel):
        raise ValueError(f"padding='same' needs odd kernels, got kernel {tuple(kernel)}")
    if padding == "valid" and any(s < k for s, k in zip(spatial, kernel, strict=True)):
        raise ValueError(
            f"padding='valid' needs the input {tuple(spatial)} at least as large as the kernel {tuple(kernel)}"
        )
    return x, strides


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


def feature_maps(
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: str = "full",
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
) -> torch.Tensor:
    """Bias-free pre-activation feature maps (N, M, \\*out) of a conv layer, by running it.

    ``padding``: ``"full"`` (k-1 zeros per side, output S+k-1), ``"circular"`` (wrap-around,
    output S: :math:`F_i[t]=\\sum_n K_i[n]X[(t+n) \\bmod S]`), ``"same"`` ((k-1)/2 zeros, odd kernels)
    or ``"valid"`` (no padding, output S-k+1). x is (C, \\*spatial) or (N, C, \\*spatial).

    ``stride`` (an int or one per spatial axis) > 1 needs ``"full"``: k-1 zeros per side and the
    given stride, output :math:`\\lfloor(S+k-2)/s\\rfloor+1`. ``transposed=True`` runs
    ``conv_transposeNd`` with a weight (C, M, \\*k), padding 0 (``"full"``, the only one): the whole
    output, :math:`s(S-1)+k`.

    Example:
        >>> feature_maps(torch.ones(1, 5), torch.ones(2, 1, 3), "full").shape
        torch.Size([1, 2, 7])
        >>> feature_maps(torch.ones(1, 5), torch.ones(1, 2, 3), stride=2, transposed=True).shape
        torch.Size([1, 2, 11])
    """
    x, strides = _check(x, weight, padding, stride=stride, transposed=transposed)
    kernel = list(weight.shape[2:])
    if transposed:
        return _CONV_TRANSPOSE[len(kernel)](x, weight, stride=strides)
    conv = _CONV[len(kernel)]
    if padding == "circular":
        # wrap k-1 samples on the right only: output t sees X[t .. t+k-1] modulo S
        for a, k in enumerate(kernel):
            axis = 2 + a
            size = x.shape[axis]
            x = x.index_select(axis, torch.arange(0, size + k - 1, device=x.device) % size)
        return conv(x, weight)
    pad = {"full": [k - 1 for k in kernel], "same": [(k - 1) // 2 for k in kernel], "valid": [0] * len(kernel)}
    return conv(x, weight, stride=strides, padding=pad[padding])


def feature_map_gram(
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: str = "full",
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
) -> torch.Tensor:
    r"""(M, M) inner products :math:`\sum_n\langle F_{ni}, F_{nj}\rangle` of the bias-free feature maps.

    Computed by running the convolution (:func:`feature_maps`, same arguments); x is (C, \*spatial)
    or (N, C, \*spatial) and the batch is summed.

    Example:
        >>> x, w = torch.randn(3, 16, 16, dtype=torch.float64), torch.randn(4, 3, 3, 3, dtype=torch.float64)
        >>> torch.allclose(feature_map_gram(x, w), predicted_feature_map_gram(x, w))
        True
        >>> torch.allclose(feature_map_gram(x, w, stride=2), predicted_feature_map_gram(x, w, stride=2))
        True
    """
    f = feature_maps(x, weight, padding, stride=stride, transposed=transposed)
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
    _check_kernel(weight)
    m, c, kernel = weight.shape[0], weight.shape[1], list(weight.shape[2:])
    slices = weight.reshape(m * c, 1, *kernel)
    # batch b = (j, d) correlated with filter o = (i, c): out[b, o, y] = sum_n K_ic[n] K_jd[n + y - (k-1)]
    out = _CONV[len(kernel)](slices, slices, padding=[k - 1 for k in kernel])
    lags = out.shape[2:]
    return out.reshape(m, c, m, c, *lags).permute(2, 0, 3, 1, *range(4, 4 + len(kernel)))


def _check_kernel(weight: torch.Tensor) -> None:
    if not isinstance(weight, torch.Tensor) or weight.dim() - 2 not in _CONV:
        raise ValueError("weight must be a tensor of shape (M, C, *kernel) with 1 to 3 spatial dims")


def polyphase_kernel_cross_correlations(weight: torch.Tensor, stride: int | Sequence[int]) -> torch.Tensor:
    r"""Polyphase kernel correlations :math:`P^\psi_{ic,jd}[\ell]`: shape (P, M, M, C, C, \*(2k-1)).

    .. math::
        P^\psi_{ic,jd}[\ell]=\sum_{n\equiv\psi\ (\mathrm{mod}\ s)}K_{ic}[n]\,K_{jd}[n+\ell],

    the cross-correlation of :math:`K_{ic}` restricted to the taps of phase :math:`\psi` with
    :math:`K_{jd}`; the :math:`P=\prod_a s_a` phases in the row-major order of
    ``itertools.product(*map(range, stride))``, lag :math:`\ell = l-(k-1)` per axis. Summed over the
    phases it is :func:`kernel_cross_correlations`.

    Example:
        >>> w = torch.randn(3, 2, 4, 4, dtype=torch.float64)
        >>> p = polyphase_kernel_cross_correlations(w, 2)
        >>> p.shape, torch.allclose(p.sum(0), kernel_cross_correlations(w))
        (torch.Size([4, 3, 3, 2, 2, 7, 7]), True)
    """
    _check_kernel(weight)
    m, c, kernel = weight.shape[0], weight.shape[1], list(weight.shape[2:])
    masks = phase_masks(kernel, per_axis_stride(stride, len(kernel)), dtype=weight.dtype, device=weight.device)
    p = masks.shape[0]
    slices = weight.reshape(m * c, 1, *kernel)
    masked = (masks[:, None, None] * weight[None]).reshape(p * m * c, 1, *kernel)
    # batch b = (j, d), filter o = (psi, i, c): out[b, o, y] = sum_{n = psi} K_ic[n] K_jd[n + y - (k-1)]
    out = _CONV[len(kernel)](slices, masked, padding=[k - 1 for k in kernel])
    return out.reshape(m, c, p, m, c, *out.shape[2:]).permute(2, 3, 0, 4, 1, *range(5, 5 + len(kernel)))


def _lag_window(x: torch.Tensor, kernel_size: int | Sequence[int]) -> list[int]:
    """Validate x (N, C, *spatial) and return the kernel size per spatial axis."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise TypeError("x must be a floating-point torch.Tensor")
    d = x.dim() - 2
    if d not in _CONV:
        raise ValueError(f"x must be (N, C, *spatial) with 1 to 3 spatial dims, got shape {tuple(x.shape)}")
    kernel = [kernel_size] * d if isinstance(kernel_size, int) else list(kernel_size)
    if len(kernel) != d or any(not isinstance(k, int) or k < 1 for k in kernel):
        raise ValueError(f"kernel_size must be a positive int or {d} of them, got {kernel_size!r}")
    return kernel


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
    kernel = _lag_window(x, kernel_size)
    pads = [k - 1 for k in kernel]
    xt = x.transpose(0, 1)  # (C, N, *S): channel d as the batch, samples as conv channels
    inp = _circular_pad(xt, pads) if circular else F.pad(xt, [p for p in reversed(pads) for _ in range(2)])
    out = _CONV[len(kernel)](inp, xt)  # out[d, c, y] = sum_n sum_t X_nc[t] X_nd[t + y - (k-1)] = R_cd[y - (k-1)]
    return out.transpose(0, 1)


def polyphase_input_correlations(
    x: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int]
) -> torch.Tensor:
    r"""Polyphase input correlations :math:`R^\varphi_{cd}[\ell]` on the lag window: (P, C, C, \*(2k-1)).

    .. math::
        R^\varphi_{cd}[\ell]=\sum_n\sum_{t\equiv\varphi\ (\mathrm{mod}\ s)}X_{nc}[t]\,X_{nd}[t+\ell],
        \qquad |\ell_a|\le k_a-1,

    with :math:`t` indexing the unpadded input from 0 and the phases in the row-major order of
    ``itertools.product(*map(range, stride))``. Summed over the phases it is :func:`input_correlations`.

    Example:
        >>> r = polyphase_input_correlations(torch.tensor([[[1.0, 2.0, 3.0]]]), 2, 2)
        >>> r[:, 0, 0]                                # phase 0: t = 0, 2; phase 1: t = 1
        tensor([[ 6., 10.,  2.],
                [ 2.,  4.,  6.]])
    """
    kernel = _lag_window(x, kernel_size)
    masks = phase_masks(x.shape[2:], per_axis_stride(stride, len(kernel)), dtype=x.dtype, device=x.device)
    p, (n, c) = masks.shape[0], x.shape[:2]
    pads = [k - 1 for k in kernel]
    xt = x.transpose(0, 1)  # (C, N, *S)
    inp = F.pad(xt, [q for q in reversed(pads) for _ in range(2)])
    masked = (masks[:, None, None] * xt[None]).reshape(p * c, n, *x.shape[2:])
    out = _CONV[len(kernel)](inp, masked)  # out[d, (phi, c), y] = R^phi_cd[y - (k-1)]
    return out.reshape(c, p, c, *out.shape[2:]).permute(1, 2, 0, *range(3, 3 + len(kernel)))


def upsampled_input_correlations(
    x: torch.Tensor, kernel_size: int | Sequence[int], stride: int | Sequence[int]
) -> torch.Tensor:
    r"""Correlations :math:`R^u_{cd}[\ell]` of the zero-inserted input on the lag window: (C, C, \*(2k-1)).

    :math:`u_c=\mathrm{up}_s(X_c)` (:math:`u_c[s t]=X_c[t]`, zero elsewhere), so
    :math:`R^u_{cd}[s m]=R_{cd}[m]` and :math:`R^u_{cd}[\ell]=0` unless every :math:`\ell_a` is a
    multiple of :math:`s_a`: the input's correlations (:func:`input_correlations`) placed on the
    lattice :math:`s\mathbb Z`, for :math:`|\ell_a|\le k_a-1`.

    Example:
        >>> upsampled_input_correlations(torch.tensor([[[1.0, 2.0, 3.0]]]), 3, 2)[0, 0]   # lags -2 .. 2
        tensor([ 8.,  0., 14.,  0.,  8.])
    """
    kernel = _lag_window(x, kernel_size)
    strides = per_axis_stride(stride, len(kernel))
    coarse = [(k - 1) // s + 1 for k, s in zip(kernel, strides, strict=True)]
    r = input_correlations(x, coarse)  # lags m with |m_a| <= (k_a - 1) // s_a
    out = r.new_zeros(*r.shape[:2], *[2 * k - 1 for k in kernel])
    lattice = tuple(
        slice(k - 1 - s * (q - 1), k + s * (q - 1), s) for k, s, q in zip(kernel, strides, coarse, strict=True)
    )
    out[(slice(None), slice(None)) + lattice] = r
    return out


def _phase_shift(kernel: Sequence[int], strides: Sequence[int]) -> torch.Tensor:
    r"""For each phase :math:`\varphi` (row-major), the index of :math:`\psi=\varphi+k-1 \bmod s`."""
    phases = list(itertools.product(*map(range, strides)))
    index = {phase: i for i, phase in enumerate(phases)}
    return torch.tensor(
        [index[tuple((p + k - 1) % s for p, k, s in zip(ph, kernel, strides, strict=True))] for ph in phases]
    )


def _lattice_prediction(
    x: torch.Tensor, weight: torch.Tensor, strides: tuple[int, ...], transposed: bool
) -> torch.Tensor:
    """The predicted Gram of a strided or transposed conv; x already (N, C, *spatial)."""
    kernel = list(weight.shape[2:])
    if transposed:
        kk = kernel_cross_correlations(weight.transpose(0, 1)).flatten(4)  # [i, j, c, d, l]: W[c,i] (x) W[d,j]
        r = upsampled_input_correlations(x, kernel, strides).flatten(2)  # [c, d, l]: R^u_cd[l]
        return torch.einsum("ijcdl,dcl->ij", kk, r)  # R^u_cd[-l] = R^u_dc[l]
    kk = polyphase_kernel_cross_correlations(weight, strides).flatten(5)  # [psi, i, j, c, d, l]
    r = polyphase_input_correlations(x, kernel, strides).flatten(3)  # [phi, c, d, l]
    return torch.einsum("pijcdl,pcdl->ij", kk[_phase_shift(kernel, strides).to(kk.device)], r)


def predicted_feature_map_gram(
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: str = "full",
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
) -> torch.Tensor:
    r"""The (M, M) feature-map Gram predicted from kernel and input correlations only (spec §3.5, issue 10).

    Stride 1, forward (weight (M, C, \*k)):

    .. math::
        G_{ij}=\sum_{c,d}\big\langle K_{ic}\circledast K_{jd},\ (R_{cd})_{\Lambda}\big\rangle

    from :func:`kernel_cross_correlations` and :func:`input_correlations` (circular :math:`R` for
    ``padding="circular"``). Exact (to rounding) for ``"full"`` and ``"circular"``; compare
    ``same``/``valid`` maps with the ``"full"`` prediction to see the boundary error
    (:func:`identity_error`).

    Stride :math:`s>1` (an int or one per axis), forward, ``"full"`` (k-1 zeros per side), with the
    phases :math:`\varphi` taken modulo :math:`s` per axis:

    .. math::
        G_{ij}=\sum_{c,d}\sum_\varphi\sum_{\ell\in\Lambda} R^\varphi_{cd}[\ell]\,P^{\varphi+k-1}_{ic,jd}[\ell]

    from :func:`polyphase_input_correlations` and :func:`polyphase_kernel_cross_correlations`.

    ``transposed=True``, any stride, weight :math:`W` (C, M, \*k), ``"full"`` = padding 0:

    .. math::
        G_{ij}=\sum_{c,d}\sum_{\ell\in\Lambda}(W[c,i]\circledast W[d,j])[\ell]\;R^u_{cd}[-\ell]

    from :func:`kernel_cross_correlations` of the filters :math:`W[c,i]` and
    :func:`upsampled_input_correlations` (the input's correlations on the lattice :math:`s\mathbb Z`).
    Both are exact to rounding. x is never convolved with the weight.

    Example:
        >>> x, w = torch.randn(2, 32, dtype=torch.float64), torch.randn(3, 2, 5, dtype=torch.float64)
        >>> torch.allclose(predicted_feature_map_gram(x, w, "circular"), feature_map_gram(x, w, "circular"))
        True
        >>> g = feature_map_gram(x, w.transpose(0, 1), stride=3, transposed=True)
        >>> torch.allclose(predicted_feature_map_gram(x, w.transpose(0, 1), stride=3, transposed=True), g)
        True
    """
    x, strides = _check(x, weight, padding, allowed=("full", "circular"), stride=stride, transposed=transposed)
    if transposed or strides != (1,) * len(strides):
        return _lattice_prediction(x, weight, strides, transposed)
    kk = kernel_cross_correlations(weight).flatten(4)
    r = input_correlations(x, list(weight.shape[2:]), circular=padding == "circular").flatten(2)
    return torch.einsum("ijcdl,cdl->ij", kk, r)


def identity_error(
    x: torch.Tensor,
    weight: torch.Tensor,
    padding: str = "full",
    *,
    stride: int | Sequence[int] = 1,
    transposed: bool = False,
) -> torch.Tensor:
    r"""Relative error :math:`\|G-\hat G\|_F/\|G\|_F` of the identity for maps with ``padding``.

    :math:`G` = :func:`feature_map_gram` with ``padding``, ``stride`` and ``transposed``;
    :math:`\hat G` = :func:`predicted_feature_map_gram` with circular :math:`R` for ``"circular"``
    and the linear :math:`R` otherwise. Rounding level for full/circular (and for every stride,
    transposed or not); the boundary error for same/valid.

    Example:
        >>> x, w = torch.randn(64, dtype=torch.float64)[None], torch.rand(2, 1, 9, dtype=torch.float64)
        >>> bool(identity_error(x, w, "full") < 1e-12), bool(identity_error(x, w, stride=2) < 1e-12)
        (True, True)
    """
    g = feature_map_gram(x, weight, padding, stride=stride, transposed=transposed)
    x, strides = _check(x, weight, padding, stride=stride, transposed=transposed)
    if transposed or strides != (1,) * len(strides):
        pred = _lattice_prediction(x, weight, strides, transposed)
    else:  # the stride-1 forward prediction, called as documented
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
