"""Preference-optimization losses: pure functions of per-token log-probabilities.

Importing this package registers every loss: each module in this folder that calls
`register` is imported here, so a new loss is one new file (docs/ARCHITECTURE.md, "Adding
an algorithm"). Select one with `get_algorithm(config.loss.name)`.
"""

import importlib
import pkgutil

from algorithms.base import (TARGETS, Algorithm, LossInputs, OnlineRound, Requirements,
                             get_algorithm, get_loss, loss_config, register, registered_names)
from algorithms.common import (batch_mean, chosen_token_count, completion_lengths, mean_logps,
                               preference_metrics, sequence_logps)

# Modules that define no loss: the interface, the shared reductions and the checks.
_NOT_LOSSES = {"base", "common", "validation"}

for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
  if _module not in _NOT_LOSSES:
    importlib.import_module(f"algorithms.{_module}")
