"""Pure tensor functions behind the sparse layers: no state, no Lightning.

Every piece of state (duty cycles, sensitivities, boost strength) is an argument and every result a
returned tensor; the modules in :mod:`ksparse_pl.layers` own the buffers and call these.
"""

from ksparse_pl.functional.boosting import boost_factors, update_duty_cycle, winner_counts
from ksparse_pl.functional.noise import add_pixel_noise
from ksparse_pl.functional.selection import (
    k_sparse,
    keep_masked,
    keep_winners,
    scale_grad,
    select_and_keep,
    selection_scores,
    threshold_keep,
    threshold_mask,
    topk_indices,
    winner_indices,
)
from ksparse_pl.functional.sensitivity import (
    idle_sensitivity,
    last_selected,
    sensitivity_across,
    sensitivity_after,
    sensitivity_factors_at,
    sensitivity_step,
    sensitivity_step_at,
)
from ksparse_pl.functional.sparse_coding import encode_at, sparse_decode, topk_encode

__all__ = [
    "add_pixel_noise",
    "boost_factors",
    "encode_at",
    "idle_sensitivity",
    "k_sparse",
    "last_selected",
    "keep_masked",
    "keep_winners",
    "scale_grad",
    "select_and_keep",
    "selection_scores",
    "sensitivity_across",
    "sensitivity_after",
    "sensitivity_factors_at",
    "sensitivity_step",
    "sensitivity_step_at",
    "sparse_decode",
    "threshold_keep",
    "threshold_mask",
    "topk_encode",
    "topk_indices",
    "update_duty_cycle",
    "winner_counts",
    "winner_indices",
]
