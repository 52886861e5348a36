"""What the online presets (online_dpo, dno, inpo, gpo, prime) share: rounds on the built-in task.

Not a config file itself: `configs/<algorithm>.py` presets call `tiny_rounds`.
"""

import ml_collections

from configs import dpo


def tiny_rounds(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The DPO tiny model, an SFT warm-up, then 3 rounds of 512 prompts x 4 samples.

  The SFT warm-up (250 steps) leaves π_0 a mediocre sorter when it samples (about 45% of its
  responses at temperature 1 right): there is room for the rounds to improve it, and its
  samples are a mix of right and wrong sortings that the verifier separates. Each round
  trains `total_steps` = 64 steps of 16 pairs (about two epochs of its ~500 rows) from the
  previous round's policy with a fresh AdamW. Rounds are evaluated on all 256 held-out
  prompts with one response each at the sampling temperature (greedy answers of a model this
  small hide most of what a round changes).

  Learning rate and steps were chosen on DNO (docs/online.md, "The tiny presets"): at 2e-4
  and 64 steps the rounds improve π_0 where 1e-5 changes nothing measurable.
  """
  dpo.tiny(config)
  config.total_steps = 64
  config.batch_size = 16
  config.eval_every = 0
  config.checkpoint_every = 16
  config.log_every = 8
  config.online.update(rounds=3, num_prompts=512, num_samples=4, temperature=1.0,
                       max_new_tokens=20, sft_steps=250, sft_learning_rate=1e-3,
                       eval_prompts=256, eval_temperature=1.0)
  config.optimizer.update(learning_rate=2e-4, warmup_steps=4)
  return config


def pairwise_nll(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The NLL term on the chosen responses (`loss.sft_weight` = 1, RPO / iterative RPO, Pang et
  al. 2024) for the pairwise losses (online_dpo, dno, inpo) on this verifiable task.

  Without it every pairwise loss lowered the likelihood of the right answers together with
  the wrong ones and each round made π_t WORSE than π_0 (measured, docs/online.md); with it
  the rounds improve. Set `--config.loss.sft_weight=0` for the papers' plain losses.
  """
  config.loss.sft_weight = 1.0
  return config
