"""NNK neighbourhoods, NNK graphs and channel-wise NNK (CW-NNK) overlap analysis.

* :func:`nnk_neighbors` -- NNK neighbourhoods of points (``solver="exact"``, batched active set;
  ``"pgd"``, projected gradient descent; or ``"pruning"``, the authors' released one-way pruning
  solver, to reproduce published numbers; cosine or Gaussian kernel).
* :class:`NNKOptions` -- the settings every function here takes, validated once; the same fields
  can be given as keywords (``nnk_neighbors(X, k=30)``).
* :func:`nnk_graph` -- the symmetric NNK graph as a ``scipy.sparse`` matrix.
* :func:`channel_overlap`, :func:`channel_loo_error`, :func:`layer_overlap` -- channel-wise NNK
  of conv-layer activations: neighbour counts, channel overlap (M1, M1w, M2, M3), LOO error.

On CPU, with the optional ``numba`` (``pip install 'convsim[fast]'``), candidate selection, kernel
systems and the exact and pruning solvers run as compiled kernels; :func:`compiled_kernels` (or
``CONVSIM_NUMBA=0``) switches them off.
"""

from convsim.nnk.channels import ChannelOverlap, channel_loo_error, channel_overlap, layer_overlap
from convsim.nnk.graph import nnk_graph
from convsim.nnk.neighbors import NNKResult, nnk_neighbors
from convsim.nnk.options import NNKOptions
from convsim.nnk.solvers import SolveResult, active_set, compiled_kernels, projected_gradient, pruning

__all__ = [
    "NNKOptions",
    "NNKResult",
    "nnk_neighbors",
    "nnk_graph",
    "ChannelOverlap",
    "channel_overlap",
    "channel_loo_error",
    "layer_overlap",
    "SolveResult",
    "active_set",
    "projected_gradient",
    "pruning",
    "compiled_kernels",
]
