"""Adapters of the library to other tools; each is optional and needs its tool installed.

* :mod:`convsim.integrations.torchmetrics`: ``FeatureMapSimilarityMetric``, the streaming
  feature-map similarity of :class:`convsim.measure.FeatureMapSimilarity` as a
  ``torchmetrics.Metric`` (``pip install convsim[torchmetrics]``).

``import convsim`` does not import this package, and importing a module of it works without its
tool: the tool is needed when its class is built, which raises an ``ImportError`` naming the extra.
"""
