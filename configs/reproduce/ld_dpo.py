r"""LD-DPO (Liu, Bai, Han, Weng, Xu, Cao, Wang, Cai 2024, "Length Desensitization in
Direct Preference Optimization", arXiv 2409.06411): DPO on a likelihood whose tokens past
the shorter response's length are weighted by α (`loss.ld_alpha`).

Headline (abstract; the per-model tables were not recovered, see
the shared research notes (research/algorithms.md) §2.3):

| model | benchmark | number | source |
|---|---|---|---|
| Llama2-13B, Llama3-8B, Qwen2-7B (Base and Instruct) | MT-Bench, AlpacaEval 2 | beats DPO and the baselines (R-DPO, SimPO, WPO, SamPO) | abstract |
| same | response length vs DPO | 10-40% shorter | abstract |
| Llama3-8B-Instruct | best α of the sweep | α = 0.5 | §5 α sweep [secondary] |

The paper trains on UltraFeedback [secondary]; the exact release is not stated in what we
read, so this recipe takes `HuggingFaceH4/ultrafeedback_binarized` (splits train_prefs /
test_prefs, columns `prompt`, `chosen`, `rejected`, `score_chosen`, `score_rejected`; the
README's "UltraFeedback-binarized" layout) [unverified]. β and the learning rate were not
recovered: the DPO defaults for the model are used [unverified]. The reference gets the
same α split (TRL >= 0.29; the paper does not say, algorithms.md §2.1).

One host:

    python -m experiments.reproduce --recipe=ld_dpo --preset=paper --workdir=/tmp/ld_paper \
        --checkpoint=/path/to/Meta-Llama-3-8B-Instruct --data=/path/to/ultrafeedback_binarized
    python -m experiments.train --config=configs/reproduce/ld_dpo.py:paper \
        --workdir=/tmp/ld_paper --config.model.init_from=/path/to/Meta-Llama-3-8B-Instruct \
        --config.data.tokenizer=/path/to/Meta-Llama-3-8B-Instruct \
        --config.data.path=/path/to/ultrafeedback_binarized --config.mesh.fsdp=8

A multi-host pod (the same command on every host, shared storage):

    python -m experiments.reproduce --recipe=ld_dpo --preset=paper --workdir=gs://bucket/ld \
        --checkpoint=/mnt/shared/Meta-Llama-3-8B-Instruct \
        --data=/mnt/shared/ultrafeedback_binarized --distributed \
        --set=mesh.fsdp=32 --set=grad_accum_steps=4

The tiny preset (CPU, about a minute: configs/ld_dpo.py:tiny, α = 0.5):

    python -m experiments.reproduce --recipe=ld_dpo --preset=tiny --workdir=/tmp/ld_recipe
"""

import ml_collections

from configs import base, reproduce
from configs import ld_dpo as ld_dpo_config

PAPER = {
    "title": "LD-DPO (Liu et al. 2024, arXiv 2409.06411)",
    "rows": [
        ("Llama3-8B / Qwen2-7B / Llama2-13B, Base and Instruct", "MT-Bench, AlpacaEval 2",
         "beats DPO; 10-40% shorter responses (table numbers not recovered)", "abstract"),
        ("Llama3-8B-Instruct", "best α", "0.5", "§5 α sweep [secondary]"),
    ],
    "metric": "eval/rewards/accuracies",
}

DATA = {
    "dataset": "HuggingFaceH4/ultrafeedback_binarized [unverified release]",
    "splits": ("train_prefs", "test_prefs"),
    "columns": "prompt (string), chosen, rejected (conversations), score_chosen, score_rejected",
    "layout": "UltraFeedback-binarized",
}


def paper(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  reproduce.recipe_name(config, "ld_dpo", "paper")
  # §5: Llama3-8B in the Instruct setting (also Base; Llama2-13B, Qwen2-7B)
  reproduce.use_checkpoint(config, "meta-llama/Meta-Llama-3-8B-Instruct")
  reproduce.llama3_8b(config.model)  # config.json of Meta-Llama-3-8B-Instruct
  config.data.path = "/path/to/ultrafeedback_binarized"  # §5: UltraFeedback [unverified release]
  config.data.train_split = "train_prefs"  # the dataset card's splits
  config.data.eval_split = "test_prefs"  # the dataset card's splits
  config.data.max_prompt_len = 1024  # [unverified: not recovered]
  config.data.max_completion_len = 1024  # [unverified: not recovered]
  config.data.buckets = reproduce.buckets(1024, 1024)  # padding only [unverified: our choice]
  config.loss.ld_alpha = 0.5  # §5 α sweep peaks at 0.5 on Llama3-8B-Instruct; TRL paper index
  config.loss.ld_apply_to_ref = True  # TRL >= 0.29 (the paper is silent) [unverified]
  config.loss.beta = 0.1  # DPO's default β (algorithms.md §2.3) [unverified]
  config.batch_size = 128  # SimPO/Zephyr UltraFeedback recipes [unverified]
  # Memory, not maths (the same loss and gradients): experiments/benchmark.py --memory_only on 8
  # devices (fsdp=8) plans 4,213.8 GiB/device without the settings below, 32.8 GiB/device with them
  # (docs/recipes.md, "Memory of the paper presets"). [unverified on a GPU]
  config.grad_accum_steps = 16  # benchmark.py plan: micro-batch 8 pairs (global batch 128 kept)
  config.model.remat = "block"  # benchmark.py plan (docs/recipes.md)
  config.model.logits_on = "completion"  # benchmark.py plan (docs/recipes.md)
  config.mesh.shard_activations = True  # benchmark.py plan: FSDP activations
  config.optimizer.learning_rate = 5e-7  # DPO default for Llama3 (algorithms.md §2.3) [unverified]
  config.optimizer.decay = "cosine"  # [unverified: the Zephyr/SimPO recipes' schedule]
  config.optimizer.warmup_steps = 48  # warmup ratio 0.1 [unverified]
  config.total_steps = 477  # one epoch of 61,135 pairs at batch 128 [unverified]
  config.optimizer.grad_clip_norm = 1.0  # HF default [unverified]
  return config


def tiny(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  ld_dpo_config.tiny(config)  # α = 0.5, reference weighted too
  reproduce.recipe_name(config, "ld_dpo", "tiny")
  return config


PRESETS = {"paper": paper, "tiny": tiny}


def get_config(preset: str = "tiny") -> ml_collections.ConfigDict:
  return base.algorithm_config("ld_dpo", preset, PRESETS)
