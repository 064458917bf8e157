import os

import pytest
import torch

# Tests never touch the network or a real W&B account.
os.environ["WANDB_MODE"] = "offline"
os.environ.setdefault("WANDB_SILENT", "true")


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
