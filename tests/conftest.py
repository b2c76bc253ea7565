"""Shared test set-up.

Tests use tiny tensors, for which one intra-op thread is fastest and avoids oversubscribing the
2-core CI machine (subprocess tests such as the DDP run start their own threads). The setting is
restored after every test, so a test that changes it (the trainer sets its own) cannot leak.
"""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
