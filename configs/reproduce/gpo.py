r"""SPPO / GPM + GPO (Zhang et al. 2025, "Beyond Bradley-Terry Models: A
General Preference Model for Language Model Alignment", ICML 2025, arXiv 2410.02197; with
SPPO, Wu et al. 2024, arXiv 2405.00675): SPPO-style self-play whose targets are a General
Preference Model's scores of the policy's K samples against each other, trained against
π_t (official code: general-preference/general-preference-model `LLM-Alignment/`,
uclaml/SPPO; algorithms.md §5).

Headline:

| model | benchmark | number | source |
|---|---|---|---|
| GPM (d=8), Llama-3.1-8B-Instruct | RewardBench average | 91.90 (BT: 90.56) | RewardBench table [paper] |
| GPM (d=6), Gemma-2B-it | RewardBench average | 82.29 (BT: 74.85) | RewardBench table [paper] |
| GPM vs BT reward model | cyclic-preference sets, pairwise accuracy | GPM 100% (BT: 62.4% / 50.0%) | cyclic-preference table [paper] |
| GPO + GPM, Llama-3-8B-Instruct | AlpacaEval 2.0 LC | beats SPPO/BT; exact numbers not recovered | Table 3 [unverified] |

Data: prompts `UCLA-AGI/data-mistral-7b-instruct-sppo-iter{1,2,3}` (UltraFeedback prompts,
column `prompt`), one set per round; the oracle is a trained GPM (`online.scorer=gpm`,
`online.scorer_path` = the workdir of a `configs/gpm.py` run). The three sets go in one
train file, cut into disjoint per-round slices (`online.prompt_order='partition'`); their
`chosen` / `rejected` columns (the earlier pipeline's samples) are read but not used.

One host (one process; shard the model over the host's chips):

    python -m experiments.reproduce --recipe=gpo --preset=paper --workdir=/tmp/gpo_paper \
        --checkpoint=/path/to/Meta-Llama-3-8B-Instruct --data=/path/to/sppo_prompts \
        --set=online.scorer_path=/path/to/gpm_run --set=mesh.fsdp=8 \
        --reward_bench=/path/to/reward-bench  # optional: the GPM's RewardBench table first
    python -m experiments.iterate --config=configs/reproduce/gpo.py:paper \
        --workdir=/tmp/gpo_paper --config.model.init_from=/path/to/Meta-Llama-3-8B-Instruct \
        --config.data.tokenizer=/path/to/Meta-Llama-3-8B-Instruct \
        --config.data.path=/path/to/sppo_prompts --config.online.scorer_path=/path/to/gpm_run

A multi-host pod (the same command on every host; workdir, data and the GPM run on storage
every host sees; each process restores the GPM onto the mesh, docs/online.md "On several
hosts"; `experiments.iterate` takes the same `--distributed`):

    python -m experiments.reproduce --recipe=gpo --preset=paper --workdir=/mnt/shared/gpo \
        --checkpoint=/mnt/shared/Meta-Llama-3-8B-Instruct --data=/mnt/shared/sppo_prompts \
        --set=online.scorer_path=/mnt/shared/gpm_run --distributed \
        --set=mesh.fsdp=32 --set=grad_accum_steps=2

The GPM's RewardBench table alone (allenai/reward-bench's 'filtered' split, local copy):

    python -m experiments.reward_bench --workdir=/path/to/gpm_run \
        --data=/path/to/reward-bench --split=filtered

The tiny preset (CPU, about 3 minutes on a quiet machine): first a GPM and a BT reward
model on cyclic preferences (`REWARD_MODELS` below: held-out pairwise accuracy, the paper's
cyclic-preference claim in miniature), then configs/gpo.py:tiny's rounds (scores from the
sorting verifier, β = 1; 2 rounds of 512 prompts x 64 steps):

    python -m experiments.reproduce --recipe=gpo --preset=tiny --workdir=/tmp/gpo_recipe
"""

import ml_collections

from configs import base, reproduce
from configs import gpo as gpo_config

PAPER = {
    "title": "GPM + GPO (Zhang et al. 2025, ICML, arXiv 2410.02197)",
    "rows": [
        ("GPM d=8, Llama-3.1-8B-Instruct", "RewardBench average", "91.90 (BT 90.56)",
         "RewardBench table"),
        ("GPM d=6, Gemma-2B-it", "RewardBench average", "82.29 (BT 74.85)", "RewardBench table"),
        ("GPM vs BT reward model", "cyclic-preference sets, pairwise accuracy",
         "GPM 100% (BT 62.4% / 50.0%)", "cyclic-preference table [paper]"),
        ("GPO + GPM, Llama-3-8B-Instruct", "AlpacaEval 2.0 LC", "beats BT-based SPPO "
         "(numbers not recovered)", "Table 3 [unverified]"),
    ],
    "metric": "eval/win_rate",
}

DATA = {
    "dataset": "UCLA-AGI/data-mistral-7b-instruct-sppo-iter{1,2,3}",
    "splits": ("train",),
    "columns": "prompt (chosen / rejected unused); responses come from the policy",
    "layout": "pairs, or prompts only",
}


def paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  reproduce.recipe_name(config, "gpo", "paper")
  # LLM-Alignment/run_gpo_llama-3_table_gp.sh: Llama-3-8B-Instruct start
  reproduce.use_checkpoint(config, "meta-llama/Meta-Llama-3-8B-Instruct")
  reproduce.llama3_8b(config.model)  # config.json of Meta-Llama-3-8B-Instruct
  config.online.scorer = "gpm"  # LLM-Alignment scripts: GPM scores every pair
  config.online.scorer_path = "/path/to/gpm_run"  # a finished configs/gpm.py run; placeholder
  config.online.rounds = 3  # LLM-Alignment scripts: 3 SPPO iterations
  config.online.num_samples = 5  # LLM-Alignment scripts: K = 5 (SPPO generate.sh pairs=5)
  config.online.num_prompts = 20000  # sppo-iter{t} prompt sets, ~20k each [unverified]
  config.online.prompt_order = "partition"  # scripts: one disjoint prompt set per iteration
  config.data.path = "/path/to/sppo_prompts"  # scripts: sppo-iter{1,2,3} prompts, one file
  config.online.temperature = 0.7  # SPPO scripts/generate.py [unverified]
  config.online.max_new_tokens = 2048  # SPPO scripts/generate.py [unverified]
  config.online.sft_steps = 0  # algorithms.md §5.2: π_0 = instruct model
  config.online.eval_prompts = 805  # AlpacaEval 2 size (Table 3) [unverified]
  config.online.eval_temperature = 0.0  # [unverified: decoding not recovered]
  config.loss.gpo_loss_type = "sppo_score"  # LLM-Alignment scripts: LOSS_TYPE sppo_score
  config.loss.beta = 0.001  # scripts: BETA=0.001 (SPPO pipeline.sh)
  config.loss.gpo_target_clamp = 1000.0  # scripts: CLAMP_THRES=1000
  # The scorer's τ is the GPM run's own loss.preference_tau (0.1, algorithms.md §5.1).
  config.data.max_prompt_len = 1024  # [unverified: not recovered]
  config.data.max_completion_len = 2048  # = max_new_tokens [unverified]
  config.data.buckets = reproduce.buckets(1024, 2048)  # padding only [unverified: our choice]
  # SPPO pipeline.sh OPTIM=rmsprop; optax AdamW is this repo's only optimizer. [unverified]
  config.optimizer.learning_rate = 5e-7  # SPPO pipeline.sh LEARNING_RATE=5.0e-7
  config.batch_size = 64  # per-device 8 (algorithms.md §5.2) x 8 GPUs [unverified]
  # Memory, not maths (the same loss and gradients): experiments/benchmark.py --memory_only on 8
  # devices (fsdp=8) plans 3,342.0 GiB/device without the settings below, 28.4 GiB/device with
  # them (docs/recipes.md, "Memory of the paper presets"). [unverified on a GPU]
  config.grad_accum_steps = 8  # benchmark.py plan: micro-batch 8 pairs (global batch 64 kept)
  config.model.remat = "block"  # benchmark.py plan (docs/recipes.md)
  config.model.logits_on = "completion"  # benchmark.py plan (docs/recipes.md)
  config.mesh.shard_activations = True  # benchmark.py plan: FSDP activations
  config.optimizer.decay = "linear"  # SPPO recipes/*/config_full.yaml [unverified]
  config.optimizer.warmup_steps = 31  # warmup ratio 0.1 [unverified]
  config.total_steps = 312  # 1 epoch per iteration of 20k pairs at batch 64 [unverified]
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  gpo_config.tiny(config)  # sppo_score targets from the verifier's scores, β = 1
  reproduce.shorter_rounds(config)
  reproduce.recipe_name(config, "gpo", "tiny")
  return config


PRESETS = {"paper": paper, "tiny": tiny}

# The paper's claim about its scorer, in miniature (experiments/reproduce.py runs it before
# the rounds): a GPM and a BT reward model, the tiny decoder cut to 2 layers x 64, trained
# on the same cyclic preferences (data/cyclic.py: rock-paper-scissors-lizard-Spock, 512
# train / 128 held-out pairs) and scored on the held-out pairs RewardBench's way
# (training/reward_bench.py), beside the paper's cyclic-preference numbers. No ranking gets
# more than 7 of the tournament's 10 pairs right, so BT cannot pass 0.7 in expectation.
# At the paper's scale, score the scorer GPM on RewardBench instead:
# `python -m experiments.reward_bench --workdir=/path/to/gpm_run --data=/path/to/reward-bench
# --split=filtered` (allenai/reward-bench; columns prompt, chosen, rejected, subset).
REWARD_MODELS = {"tiny": {
    "data": "cyclic",
    "configs": {"gpm": "configs/gpm.py:tiny", "bt_reward": "configs/bt_reward.py:tiny"},
    "overrides": ("total_steps=150", "optimizer.learning_rate=0.003", "model.num_layers=2",
                  "model.hidden_size=64", "model.intermediate_size=128", "model.num_heads=4",
                  "model.num_kv_heads=2", "eval_every=150", "checkpoint_every=150"),
}}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  return base.algorithm_config("gpo", preset, PRESETS)
