"""Preference-optimization losses: pure functions of per-token log-probabilities.

Importing this package registers every loss; select one with `get_loss(config.loss.name)`.
"""

from algorithms.base import (Algorithm, LossInputs, Requirements, batch_mean,
                             completion_lengths, get_algorithm, get_loss, mean_logps,
                             preference_metrics, register, registered_names, sequence_logps)
from algorithms import dpo  # noqa: F401  (registers the DPO family)
from algorithms import simpo  # noqa: F401
