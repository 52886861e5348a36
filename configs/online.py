"""What the online presets (dno, inpo, gpo, prime) share: one round on the built-in task.

Not a config file itself: `configs/<algorithm>.py` presets call `tiny_round`.
"""

import ml_collections

from configs import dpo


def tiny_round(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The DPO tiny model, 250 SFT steps, then one round of 256 prompts x 4 samples.

  The SFT warm-up makes the sampled responses a mix of right and wrong sortings, so that
  the verifier separates them (a random byte-level model would get every prompt wrong, and
  no pair would carry a preference). Training then runs 32 steps of 16 pairs on the round's
  data: about two epochs, as iterative recipes train one or two epochs per round.
  """
  dpo.tiny(config)
  config.total_steps = 32
  config.batch_size = 16
  config.eval_every = 16
  config.checkpoint_every = 16
  # After the warm-up about 2/3 of the sampled sortings are right (greedy: more).
  config.online.update(num_prompts=256, num_samples=4, temperature=0.8, max_new_tokens=20,
                       sft_steps=250, sft_learning_rate=1e-3, eval_prompts=32)
  # The round trains at 1e-5. Measured with DNO (held-out greedy verifier reward after the
  # round, from 0.875 after SFT): 0.25 at 5e-5, 0.66 at 1e-5. A DPO-style loss on a model
  # this small lowers the chosen responses' likelihood too, and greedy answers suffer.
  config.optimizer.update(learning_rate=1e-5, warmup_steps=4)
  return config
