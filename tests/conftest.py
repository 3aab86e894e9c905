import pytest
import torch

import absvit  # noqa: F401  (registers the models)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
