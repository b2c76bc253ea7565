"""convsim: measure and reduce feature-map redundancy in convolutional neural networks."""
__version__ = "0.1.0"
