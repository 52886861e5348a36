"""Every field a run can set, with defaults; algorithm and preset configs override these.

Any field can be overridden from the command line:

    python -m experiments.train --config=configs/dpo.py:tiny --config.loss.beta=0.2

`training.config_check.validate(config)` rejects bad values before any compute starts.
"""

import ml_collections

import algorithms


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "base"  # preset name, recorded in metrics and the benchmark output
  config.seed = 0
  config.total_steps = 1000
  config.batch_size = 32  # global, in preference pairs
  config.grad_accum_steps = 1  # the step splits the batch into this many micro-batches

  # The loss and its hyperparameters: `name` and the registered loss's own keys with their
  # defaults (each loss module's `register(..., defaults=...)`); a key of another loss is
  # refused. Switch losses with `set_loss(config, name)` or by starting from configs/<name>.py.
  config.loss = algorithms.loss_config("dpo")

  config.model = ml_collections.ConfigDict()
  # A Hugging Face checkpoint directory (config.json + *.safetensors), or "" for random init
  # with the shape below.
  config.model.init_from = ""
  config.model.architecture = "llama"
  config.model.vocab_size = 32000
  config.model.hidden_size = 2048
  config.model.intermediate_size = 5632
  config.model.num_layers = 16
  config.model.num_heads = 16
  config.model.num_kv_heads = 8
  config.model.head_dim = ml_collections.FieldReference(None, field_type=int)
  config.model.rms_norm_eps = 1e-5
  config.model.rope_theta = 10000.0
  config.model.qkv_bias = False
  config.model.tie_word_embeddings = False
  config.model.max_position_embeddings = 4096
  config.model.dtype = "float32"  # compute dtype; "bfloat16" on GPU/TPU (params stay fp32)
  config.model.param_dtype = "float32"
  # What a block keeps for the backward: "none" | "block" | "dots" | "nothing" | "offload"
  # (GPU/TPU only); models/config.py REMAT_MODES.
  config.model.remat = "none"

  config.reference = ml_collections.ConfigDict()
  # "in_step": a frozen copy of the initial policy runs a forward pass inside the train step;
  # "precomputed": its log-probs are computed once before training and cached with the data.
  config.reference.mode = "in_step"

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # local TRL-layout preference file/dir, or "" for the built-in task
  config.data.tokenizer = ""  # directory with tokenizer.json, or "" for the byte tokenizer
  config.data.data_dir = ""  # TFDS cache; "" means WORKDIR/tfds
  config.data.train_split = "train"  # e.g. "train_prefs" (UltraFeedback-binarized)
  config.data.eval_split = "test"  # "test" also finds "validation" files, and vice versa
  # A path whose only split is the training split (a single file): this fraction of its
  # records (at least one, whole prompts at a time, seeded by config.seed) is held out as
  # eval_split; 0 refuses such a path instead.
  config.data.eval_fraction = 0.05
  config.data.max_prompt_len = 256
  config.data.max_completion_len = 768
  config.data.buckets = (128, 256, 512, 1024)  # padded sequence lengths (prompt+completion)
  config.data.synthetic_train_size = 4096
  config.data.synthetic_test_size = 256
  # A pair whose chosen equals rejected teaches nothing: "drop" skips it (counted in the
  # logs), "error" stops with the file, line and field of the first one.
  config.data.on_identical_pair = "drop"
  # A prompt over max_prompt_len: "truncate" keeps its end (the text right before the
  # answer), "drop" skips the pair (counted in the logs).
  config.data.on_long_prompt = "truncate"
  # > 0: each training batch's 2 * batch_size sequences are packed into this many rows of the
  # batch's padded length, with segment ids (data/packing.py), when they fit; 0: no packing.
  # Saves the padding's compute on mixed-length data; single process, grad_accum_steps = 1.
  config.data.pack_rows = 0

  config.optimizer = ml_collections.ConfigDict()
  config.optimizer.learning_rate = 1e-6
  config.optimizer.warmup_steps = 0
  config.optimizer.decay = "cosine"  # "cosine" | "linear" | "constant"
  config.optimizer.end_lr_factor = 0.0  # final lr = learning_rate * end_lr_factor
  config.optimizer.weight_decay = 0.0
  config.optimizer.b1 = 0.9
  config.optimizer.b2 = 0.999
  config.optimizer.eps = 1e-8
  config.optimizer.grad_clip_norm = 1.0  # 0 disables clipping

  # Reward / preference model heads (loss.name = "bt_reward" or "gpm"; GPO's scorer).
  config.preference_model = ml_collections.ConfigDict()
  config.preference_model.value_dim = 2  # GPM embedding size 2k (BT uses 1)
  config.preference_model.normalize = False  # L2-normalise GPM embeddings (train and score)
  config.preference_model.prompt_head = False  # prompt-dependent eigenvalues λ(x)
  # λ(x) = softmax(W_p h) ("softmax", the official scorer) or k·softmax(W_p h/√D)
  # ("scaled_softmax", the official training file); see models.heads.PreferenceModel.
  config.preference_model.gate_form = "softmax"

  # Online algorithms (online_dpo, dno, inpo, gpo, prime): rounds of sampling from the policy,
  # scoring by an oracle and training (training/rounds.py, python -m experiments.iterate).
  # config.total_steps is the number of optimizer steps of each rollout's training.
  config.online = ml_collections.ConfigDict()
  config.online.rounds = 3  # R rounds; the policy is evaluated after each (and before: π_0)
  config.online.rollouts_per_round = 1  # PRIME: one policy update phase per fresh rollout
  config.online.num_prompts = 64  # train-split prompts sampled for each rollout
  # Which: "resample" (a fresh seeded choice each rollout) or "partition" (one seeded
  # permutation of the split cut into disjoint slices, rollout r the r-th: DNO's and SPPO's
  # per-iteration prompt sets)
  config.online.prompt_order = "resample"
  config.online.num_samples = 4  # K responses per prompt
  config.online.temperature = 1.0
  # The built-in task's verifier as an oracle: P(y ≻ y') = σ((r − r') / verifier_tau) of its
  # rule's rewards (training/oracles.py VerifierOracle).
  config.online.verifier_tau = 0.1
  config.online.max_new_tokens = 24
  # The oracle: "verifier" (the built-in task's rule), "gpm" / "bt_reward" (the workdir of a
  # finished gpm / bt_reward run in scorer_path), or "judge" (a Python callable
  # "package.module:function", fn(prompts, first, second) -> P(first ≻ second) each).
  config.online.scorer = "verifier"
  config.online.scorer_path = ""
  config.online.judge = ""
  # best_worst rows (online_dpo, dno, inpo): keep a pair when its win-rate margin
  # r(best) − r(worst) is at least this (DNO-Prct's large-margin filter); add the data's
  # chosen response as one more candidate (DNO's teacher); give each pair DNO Alg. 1's soft
  # label σ(r(best) − r(worst)) (the loss then runs its soft two-sided form).
  config.online.min_margin = 0.0
  config.online.teacher = False
  config.online.soft_labels = False
  # Steps of SFT on the train split's chosen responses before the first round (0: start
  # from the policy as loaded); the result is π_0, the fixed reference.
  config.online.sft_steps = 0
  config.online.sft_learning_rate = 1e-3  # the warm-up's own AdamW rate (same schedule)
  config.online.accuracy_range = (0.2, 0.8)  # PRIME keeps prompts with accuracy in range
  # Each round's evaluation: this many held-out prompts, one response each at this
  # temperature (0: greedy), judged against π_0's response by the oracle.
  config.online.eval_prompts = 64
  config.online.eval_temperature = 0.0

  # T-REG's contrastive prompting: the same response scored after a prompt asking for a
  # better and for a worse answer; the prefixes are put before the prompt text.
  config.t_reg = ml_collections.ConfigDict()
  config.t_reg.better_prefix = "Answer helpfully, correctly and concisely. "
  config.t_reg.worse_prefix = "Answer unhelpfully, incorrectly and verbosely. "

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: all devices not used by fsdp and tensor
  config.mesh.fsdp = 1
  config.mesh.tensor = 1
  # Pin the residual stream's batch axis to data x fsdp in the train / eval steps
  # (models/partitioning.py): FSDP proper. Off: GSPMD follows the weights' embed -> fsdp
  # layout into the activations. Which plans less memory depends on the preset
  # (docs/performance.md, "Activations on an fsdp mesh"); the same maths either way.
  config.mesh.shard_activations = False

  # Resuming a workdir refuses a changed field that changes the run's result (see
  # training/workdir.py FREE_FIELDS for those that do not); list fields here to change them on
  # purpose ("loss.beta,optimizer.learning_rate"; a section name covers its fields).
  config.resume = ml_collections.ConfigDict()
  config.resume.allow_changes = ""

  # A directory to write the trained policy to as a Hugging Face checkpoint (weights, config,
  # tokenizer files and chat template) when the run ends; "" writes none. Any run can also
  # be exported later: python -m experiments.export --workdir=W --out=DIR.
  config.export = ml_collections.ConfigDict()
  config.export.hf_dir = ""

  config.log_every = 10
  config.eval_every = 100  # 0 disables periodic eval; eval still runs at step 0 and the end
  config.eval_batch_size = 32
  config.checkpoint_every = 500  # 0 disables periodic checkpoints (the last step is kept)
  config.keep_checkpoints = 2
  config.nonfinite = "skip"  # "skip" the update of a non-finite step, or "halt"
  config.progress_bar = True

  # Speed knobs (docs/performance.md); none changes the maths. Read by models.ModelConfig
  # (the three *_impl / blocks fields, random-init runs) and experiments/benchmark.py.
  config.model.mlp_impl = "custom_vjp"  # "custom_vjp" (models/kernels.py) | "autodiff"
  # "custom_vjp" | "autodiff" | "dot_product" (jax.nn.dot_product_attention: cuDNN on GPU) |
  # "pallas" (the Pallas TPU flash-attention kernel; TPU only) | "pallas_interpret" (tests)
  config.model.attention_impl = "custom_vjp"
  config.model.attention_query_blocks = 4  # causal query blocks of the custom attention
  config.model.logp_chunk_size = 0  # >0: lm_head + logsumexp over chunks of positions
  # "all": lm_head on every position; "completion": only on the window of
  # data.max_completion_len positions that holds the completion, with a fused backward
  # (training/fused_logprobs.py; train step, eval step and reference forward alike).
  config.model.logits_on = "all"
  # True: each pair's prompt runs through the model once and both completions attend to
  # it (training/shared_prompt.py); exact up to float rounding, implies the completion
  # window head, needs prompts within data.max_prompt_len (the pipeline's limit).
  config.model.share_prompt = False
  return config


def set_loss(config: ml_collections.ConfigDict, loss_name: str,
             **hyperparameters) -> ml_collections.ConfigDict:
  """Makes `config` train `loss_name`: `config.loss` becomes that loss's defaults, then
  `hyperparameters` (its own keys only)."""
  config.loss = algorithms.loss_config(loss_name, **hyperparameters)
  return config


def override(config: ml_collections.ConfigDict, values: dict) -> ml_collections.ConfigDict:
  """Sets dotted fields (`{"loss.beta": 0.2, "data.pack_rows": 12}`) in place. A "loss.name"
  of a registered loss switches the loss first (`set_loss`), so the other "loss.*" values set
  that loss's hyperparameters; any other name is set as given (for the checks to refuse)."""
  values = dict(values)
  if values.get("loss.name") in algorithms.registered_names():
    set_loss(config, values.pop("loss.name"))
  for key, value in values.items():
    *parents, leaf = key.split(".")
    target = config
    for p in parents:
      target = target[p]
    target[leaf] = value
  return config


def algorithm_config(loss_name: str, preset: str, presets: dict,
                     **loss_overrides) -> ml_collections.ConfigDict:
  """The config of `configs/<loss_name>.py:<preset>`: these defaults, the loss, the preset."""
  if preset not in presets:
    raise ValueError(f"unknown preset {preset!r} for configs/{loss_name}.py; choose from "
                     f"{list(presets)}")
  config = set_loss(get_config(), loss_name, **loss_overrides)
  config.name = f"{loss_name}:{preset}"
  return presets[preset](config)
