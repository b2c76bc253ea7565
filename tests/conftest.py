"""Shared test set-up.

Tests use tiny tensors, for which one intra-op thread is fastest and avoids oversubscribing
the 2-core CI machine (subprocess tests such as the DDP run start their own threads).
"""
import torch

torch.set_num_threads(1)
