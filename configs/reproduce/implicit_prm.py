r"""Implicit PRM (Yuan, Li, Ding, Cui, et al. 2024, "Free Process Rewards without Process
Labels", arXiv 2412.01981; official code PRIME-RL/ImplicitPRM): an outcome reward
r = β·log πθ/π_ref trained on answer correctness alone (the CE objective here), whose
partial sums are step rewards.

Headline (README / paper; algorithms.md §7.2):

| model | benchmark | number | source |
|---|---|---|---|
| Implicit PRM (DPO), Llama-3.1-8B-Instruct | best-of-64 on MATH500 (3 generators) | best PRM of its class, above Math-Shepherd, AutoPSV, RLHFlow PRMs (table numbers not recovered) | Table 1 [unverified numbers] |
| Implicit PRM | data collection + training overhead vs MCTS-labelled PRMs | 38.8x less | abstract |

Data: `Windy0822/ultrainteract_math_rollout` (UltraInteract math instructions, 8 responses
of Llama-3.1-8B-Instruct each, with their correctness). The CE objective reads the README's
"unpaired" layout: `prompt`, `completion`, `label` (true when the final answer is correct);
rename the rollout file's columns to these [unverified: the rollout file's own column
names were not read]. The `dpo` objective reads (correct, wrong) pairs of one prompt in the
standard layout.

One host:

    python -m experiments.reproduce --recipe=implicit_prm --preset=paper \
        --workdir=/tmp/prm_paper --checkpoint=/path/to/Llama-3.1-8B-Instruct \
        --data=/path/to/ultrainteract_math_rollout.jsonl
    python -m experiments.train --config=configs/reproduce/implicit_prm.py:paper \
        --workdir=/tmp/prm_paper --config.model.init_from=/path/to/Llama-3.1-8B-Instruct \
        --config.data.tokenizer=/path/to/Llama-3.1-8B-Instruct \
        --config.data.path=/path/to/ultrainteract_math_rollout.jsonl --config.mesh.fsdp=8

A multi-host pod (the same command on every host, shared storage):

    python -m experiments.reproduce --recipe=implicit_prm --preset=paper \
        --workdir=gs://bucket/prm --checkpoint=/mnt/shared/Llama-3.1-8B-Instruct \
        --data=/mnt/shared/ultrainteract_math_rollout.jsonl --distributed \
        --set=mesh.fsdp=32 --set=grad_accum_steps=2

Best-of-64 on MATH500 (Table 1) after the paper run, candidates from π_ref
(Llama-3.1-8B-Instruct, one of the table's generators), MATH500 as `prompt` / `answer`
records (`training.best_of_n`; the sampling temperature is [unverified]):

    python -m experiments.best_of_n --config=configs/reproduce/implicit_prm.py:paper \
        --workdir=/tmp/prm_paper --config.model.init_from=/path/to/Llama-3.1-8B-Instruct \
        --config.data.tokenizer=/path/to/Llama-3.1-8B-Instruct \
        --config.data.path=/path/to/ultrainteract_math_rollout.jsonl \
        --n=64 --prompts=500 --data=/path/to/math500 --split=test --max_new_tokens=1024

The tiny preset (CPU, about 2.5 minutes: 480 PRM steps) builds the paper's data in miniature first
(`ROLLOUTS`): the tiny model after 250 SFT steps on the built-in task is the generator, the
PRM's initial model and π_ref; 4 rollouts of each of 512 train prompts (and 128 held-out
ones), labelled by the verifier, are the unpaired training data; the PRM trains on them
with the CE objective (β = 0.05). Its evaluations: the held-out PRM accuracy
(σ(r) > 0.5 ⇔ correct) and best-of-8 on 128 held-out prompts against a random pick and
pass@8 (`BEST_OF_N`):

    python -m experiments.reproduce --recipe=implicit_prm --preset=tiny --workdir=/tmp/prm_recipe
"""

import ml_collections

from configs import base, reproduce
from configs import implicit_prm as implicit_prm_config

PAPER = {
    "title": "Implicit PRM (Yuan et al. 2024, arXiv 2412.01981)",
    "rows": [
        ("Implicit PRM (DPO / CE), Llama-3.1-8B-Instruct", "best-of-64, MATH500",
         "best Llama-3.1-8B-class PRM (numbers not recovered)", "Table 1 [unverified]"),
        ("Implicit PRM", "overhead vs MCTS-labelled PRMs", "38.8x less", "abstract"),
    ],
    "metric": "eval/prm/accuracy",
}

DATA = {
    "dataset": "Windy0822/ultrainteract_math_rollout",
    "splits": ("train",),
    "columns": "prompt, completion, label (answer correct) [unverified column names]",
    "layout": "unpaired (TRL's KTO)",
}


def paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  reproduce.recipe_name(config, "implicit_prm", "paper")
  # train/tasks/run_ce.sh: Llama-3.1-8B-Instruct is the policy init and the reference
  reproduce.use_checkpoint(config, "meta-llama/Llama-3.1-8B-Instruct")
  reproduce.llama3_8b(config.model)  # config.json of Llama-3.1-8B (rope_scaling from it)
  config.model.max_position_embeddings = 131072  # Llama-3.1 config.json
  config.data.path = "/path/to/ultrainteract_math_rollout.jsonl"  # run_ce.sh dataset
  config.data.train_split = "train"  # run_ce.sh: one training file; 5% held out below
  config.data.eval_fraction = 0.05  # [unverified: the official run has no held-out split]
  config.loss.prm_objective = "ce"  # run_ce.sh (run_dpo.sh: "dpo")
  config.loss.beta = 0.05  # run_ce.sh / run_dpo.sh beta 0.05
  config.reference.mode = "precomputed"  # same loss, reference cached [unverified: our choice]
  config.data.max_prompt_len = 1024  # run_ce.sh max_len 8192 (prompt + response) [unverified split]
  config.data.max_completion_len = 7168  # run_ce.sh max_len 8192 [unverified split]
  config.data.buckets = reproduce.buckets(1024, 7168)  # padding only [unverified: our choice]
  config.batch_size = 64  # run_ce.sh train_batch_size 64
  # Memory, not maths (the same loss and gradients): experiments/benchmark.py --memory_only on 8
  # devices (fsdp=8) plans 11,282.3 GiB/device without the settings below, 53.6 GiB/device with them
  # (pairs; 36.7 GiB/device for unpaired records) (docs/recipes.md, "Memory of the paper presets").
  # [unverified on a GPU]
  config.grad_accum_steps = 8  # benchmark.py plan: micro-batch 8 (global batch 64 kept)
  config.model.remat = "block"  # benchmark.py plan (docs/recipes.md)
  config.model.logits_on = "completion"  # benchmark.py plan (docs/recipes.md)
  config.mesh.shard_activations = True  # benchmark.py plan: FSDP activations
  config.optimizer.learning_rate = 5e-7  # run_ce.sh learning_rate 5e-7
  config.optimizer.decay = "cosine"  # OpenRLHF default cosine_with_min_lr [unverified]
  config.optimizer.end_lr_factor = 0.1  # OpenRLHF min_lr = 0.1 x lr [unverified]
  config.optimizer.warmup_steps = 30  # OpenRLHF lr_warmup_ratio 0.03 [unverified]
  config.optimizer.grad_clip_norm = 1.0  # OpenRLHF max_norm default 1.0 [unverified]
  config.total_steps = 1000  # 1 epoch (run_ce.sh max_epochs 1) [unverified: data size]
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  implicit_prm_config.tiny(config)  # CE objective, β = 0.05
  # From the SFT generator on its own rollouts (ROLLOUTS below), held-out PRM accuracy /
  # best-of-8 (measured): 120 steps 0.87 / 0.90; 240 steps 0.94 / 0.95, but 0.86 / 0.93
  # after a change of float rounding (2-D GEMM projections): too close to the 0.9 target;
  # 360 steps 0.94 / 0.97, 480 steps 0.97 / 0.98. A 3x learning rate diverged (0.30).
  config.total_steps = 480
  reproduce.recipe_name(config, "implicit_prm", "tiny")
  return config


# The paper's data, built in miniature by `experiments/reproduce.py` before the tiny run
# (`training.best_of_n.prepare_rollout_data`): the generator is the tiny model after 250
# SFT steps (also the PRM's initial model and π_ref, as Llama-3.1-8B-Instruct is in §4.1),
# its K = 4 rollouts of 512 train prompts labelled by the verifier are the training data.
ROLLOUTS = {"tiny": dict(sft_steps=250, prompts=512, k=4)}
# Best-of-N after training (`training.best_of_n`, the paper's Table 1 evaluation) on held-out
# prompts, candidates sampled from π_ref. The paper preset's best-of-64 on MATH500 runs
# with `experiments/best_of_n.py` (module docstring).
BEST_OF_N = {"tiny": dict(n=8, prompts=128)}


PRESETS = {"paper": paper, "tiny": tiny}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  return base.algorithm_config("implicit_prm", preset, PRESETS)
