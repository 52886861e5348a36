r"""Pairwise accuracy of a trained GPM or BT reward model, RewardBench's way
(training/reward_bench.py): per subset, per RewardBench section and their average.

    python -m experiments.reward_bench --workdir=/path/to/gpm_run \
        --data=/path/to/reward-bench --split=filtered     # allenai/reward-bench, local copy
    python -m experiments.reward_bench --workdir=/tmp/gpm_tiny   # the run's own eval split

`--workdir` is a finished `gpm` or `bt_reward` run (configs/gpm.py, configs/bt_reward.py);
its config.json gives the tokenizer, chat template and limits, its newest checkpoint the
model. `--data` is any prompt/chosen/rejected layout the readers take (README, "Data
layouts"); a `subset` column groups the accuracies. Prints one JSON line and writes it to
`--output` (default WORKDIR/reward_bench.json).
"""

import json
import os

from absl import app, flags

from experiments.common import fail, quiet_libraries, refusals

_WORKDIR = flags.DEFINE_string("workdir", None, "A finished gpm or bt_reward run.")
_DATA = flags.DEFINE_string("data", None, "Preference pairs to score (default: the run's data).")
_SPLIT = flags.DEFINE_string("split", None, "The split of --data (default 'test'; without "
                             "--data, the run's eval split).")
_DATA_DIR = flags.DEFINE_string("data_dir", None, "Cache of the prepared data (default "
                                "WORKDIR/tfds).")
_BATCH = flags.DEFINE_integer("batch_size", 32, "Rows per forward.", lower_bound=1)
_OUTPUT = flags.DEFINE_string("output", None, "Where to write the JSON (default "
                              "WORKDIR/reward_bench.json).")
flags.mark_flag_as_required("workdir")


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  quiet_libraries()
  from training import reward_bench  # after the flags: a usage error comes first

  try:
    result = reward_bench.evaluate(_WORKDIR.value, _DATA.value, _SPLIT.value,
                                   data_dir=_DATA_DIR.value, batch_size=_BATCH.value)
  except refusals() + (FileNotFoundError, ValueError) as e:
    fail(e)
  line = json.dumps(result)
  with open(_OUTPUT.value or os.path.join(_WORKDIR.value, "reward_bench.json"), "w") as f:
    f.write(line + "\n")
  print(line)


if __name__ == "__main__":
  app.run(main)
