"""Preference-optimization losses: pure functions of per-token log-probabilities.

Importing this package registers every loss; select one with `get_loss(config.loss.name)`.
"""

from algorithms.base import (Algorithm, LossInputs, OnlineRound, Requirements, batch_mean,
                             chosen_token_count, completion_lengths, get_algorithm, get_loss,
                             mean_logps, preference_metrics, register, registered_names,
                             sequence_logps)
from algorithms import dpo  # noqa: F401  (registers the DPO family)
from algorithms import simpo  # noqa: F401
from algorithms import sft  # noqa: F401
from algorithms import ld_dpo  # noqa: F401
from algorithms import dno  # noqa: F401
from algorithms import inpo  # noqa: F401
from algorithms import t_reg  # noqa: F401
from algorithms import implicit_prm  # noqa: F401
from algorithms import prime  # noqa: F401
from algorithms import preference  # noqa: F401  (gpm, bt_reward)
from algorithms import gpo  # noqa: F401
