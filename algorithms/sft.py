"""Supervised fine-tuning on the chosen responses (the SFT stage every method starts from).

    L = −Σ_b Σ_t m_bt log πθ(y_bt | x_b, y_b,<t) / Σ_b Σ_t m_bt

the token-weighted cross-entropy of the chosen completions over the batch (TRL's `sft`
loss_type). The online presets run it for `config.online.sft_steps` steps before sampling,
so that the policy they sample from already solves part of the task (DNO, INPO, GPO and
PRIME all start from an SFT model).
"""

from __future__ import annotations

from typing import Mapping

import jax

from algorithms.base import Array, LossInputs, Metrics, Requirements, register
from algorithms.common import chosen_nll


@register("sft", requirements=Requirements(reference=False, unpaired="desirable"))
def sft(inputs: LossInputs, cfg: Mapping) -> tuple[Array, Metrics]:
  """Token-mean NLL of the chosen completions; the rejected side is ignored."""
  del cfg
  nll = chosen_nll(inputs)
  return nll, {"sft_loss": jax.lax.stop_gradient(nll)}
