"""Linear-probe accuracy: how well a logistic regression reads labels off features (Makhzani & Frey)."""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from torch import Tensor


def linear_probe_accuracy(train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor) -> float:
    """Test accuracy of a logistic regression fitted on standardized training features.

    Example:
        >>> import torch
        >>> x = torch.cat([torch.randn(50, 2) - 3, torch.randn(50, 2) + 3]); y = torch.arange(100) // 50
        >>> linear_probe_accuracy(x, y, x, y)
        1.0
    """
    scaler = StandardScaler().fit(_numpy(train_x))
    model = LogisticRegression(max_iter=2000).fit(scaler.transform(_numpy(train_x)), train_y.cpu().numpy())
    return float(model.score(scaler.transform(_numpy(test_x)), test_y.cpu().numpy()))


def _numpy(x: Tensor) -> np.ndarray:
    return x.detach().float().reshape(len(x), -1).cpu().numpy()
