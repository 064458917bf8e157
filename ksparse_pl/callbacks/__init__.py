"""Lightning callbacks that act on the sparse layers of ANY LightningModule (found via ``modules()``)."""

from ksparse_pl.callbacks.duty_cycle_boosting import DutyCycleBoosting
from ksparse_pl.callbacks.feature_grid_logger import FeatureGridLogger
from ksparse_pl.callbacks.k_schedule import KSchedule
from ksparse_pl.callbacks.lsuv_init import LSUVInit
from ksparse_pl.callbacks.node_usage_logger import NodeUsageLogger
from ksparse_pl.callbacks.noise_robustness import NoiseRobustness
from ksparse_pl.callbacks.sensitivity_schedule import SensitivitySchedule

__all__ = [
    "DutyCycleBoosting",
    "FeatureGridLogger",
    "KSchedule",
    "LSUVInit",
    "NodeUsageLogger",
    "NoiseRobustness",
    "SensitivitySchedule",
]
