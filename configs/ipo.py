"""IPO (Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human
Preferences", Eq. 17): (h − 1/(2β))² on the log-ratio margin h.

`config.loss.ipo_average_logps` (default True) uses TRL's per-token-averaged log-ratios;
False uses the paper's summed log-probs.

Presets (`--config=configs/ipo.py:PRESET`):
  tiny  the DPO tiny model and task (configs/dpo.py) with β = 0.1.
"""

from configs import base, dpo

PRESETS = {"tiny": dpo.tiny}


def get_config(preset: str = "tiny"):
  return base.algorithm_config("ipo", preset, PRESETS)
