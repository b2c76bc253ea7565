"""convsim: measure and reduce feature-map redundancy in convolutional neural networks.

The main entry points:

- :func:`conv_similarity`, :func:`conv_similarity_matrix`, :class:`ConvSimilarity`,
  :func:`cs_initialize` — the Convolutional Similarity loss and its two uses;
- :mod:`convsim.penalties` — kernel-orthogonality and decorrelation baselines;
- :class:`FeatureMapSimilarity` — streaming feature-map redundancy metric;
- :mod:`convsim.theory` — the feature-map/kernel identity, executable;
- :mod:`convsim.nnk` — NNK neighbourhoods and channel-wise NNK overlap;
- :func:`analyze` — weight, feature-map and CW-NNK redundancy of every conv layer of any model.
"""

from convsim.analysis import analyze
from convsim.measure import FeatureMapSimilarity
from convsim.similarity import ConvSimilarity, conv_similarity, conv_similarity_matrix, cs_initialize

__version__ = "0.1.0"
__all__ = [
    "ConvSimilarity",
    "FeatureMapSimilarity",
    "analyze",
    "conv_similarity",
    "conv_similarity_matrix",
    "cs_initialize",
]
