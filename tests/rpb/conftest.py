"""rpb tests run their tiny models on one thread: as fast on an idle machine, and on 2 cores shared with other
test processes 2 OpenMP threads measured an order of magnitude slower than one."""

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
