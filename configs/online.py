"""What the online presets (online_dpo, dno, inpo, gpo, prime) share: rounds on the built-in task.

Not a config file itself: `configs/<algorithm>.py` presets call `tiny_rounds`.
"""

import ml_collections

from configs import dpo


def tiny_rounds(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The DPO tiny model, a short SFT warm-up, then 3 rounds of 256 prompts x 4 samples.

  The SFT warm-up is kept short so that π_0 is a weak sorter (about a third of its greedy
  answers right): there is room for the rounds to improve it, and its sampled responses are
  a mix of right and wrong sortings that the verifier separates. Each round trains
  `total_steps` = 24 steps of 16 pairs on its rows (about 1.5 epochs; iterative recipes
  train one or two epochs per round) from the previous round's policy.
  """
  dpo.tiny(config)
  config.total_steps = 24
  config.batch_size = 16
  config.eval_every = 0
  config.checkpoint_every = 8
  config.log_every = 4
  config.online.update(rounds=3, num_prompts=256, num_samples=4, temperature=1.0,
                       max_new_tokens=20, sft_steps=150, sft_learning_rate=1e-3,
                       eval_prompts=64, eval_temperature=0.0)
  config.optimizer.update(learning_rate=1e-5, warmup_steps=4)
  return config
