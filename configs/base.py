"""Every field a run can set, with defaults; algorithm and preset configs override these.

Any field can be overridden from the command line:

    python -m experiments.train --config=configs/dpo.py:tiny --config.loss.beta=0.2

`training.config_check.validate(config)` rejects bad values before any compute starts.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.name = "base"  # preset name, recorded in metrics and the benchmark output
  config.seed = 0
  config.total_steps = 1000
  config.batch_size = 32  # global, in preference pairs
  config.grad_accum_steps = 1  # the step splits the batch into this many micro-batches

  config.loss = ml_collections.ConfigDict()
  config.loss.name = "dpo"  # a registry name, see algorithms.registered_names()
  config.loss.beta = 0.1
  config.loss.label_smoothing = 0.0  # cdpo / robust_dpo epsilon
  config.loss.ipo_average_logps = True  # TRL's per-token-averaged IPO; False: summed (paper)
  config.loss.simpo_gamma_beta_ratio = 0.5
  config.loss.sft_weight = 0.0

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
  config.model.remat = "none"  # "none" | "block"

  config.reference = ml_collections.ConfigDict()
  # "in_step": a frozen copy of the initial policy runs a forward pass inside the train step;
  # "precomputed": its log-probs are computed once before training and cached with the data.
  config.reference.mode = "in_step"

  config.data = ml_collections.ConfigDict()
  config.data.path = ""  # local TRL-layout preference file/dir, or "" for the built-in task
  config.data.tokenizer = ""  # directory with tokenizer.json, or "" for the byte tokenizer
  config.data.data_dir = ""  # TFDS cache; "" means WORKDIR/tfds
  config.data.train_split = "train"
  config.data.eval_split = "test"
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

  config.mesh = ml_collections.ConfigDict()
  config.mesh.data = -1  # -1: all devices not used by fsdp and tensor
  config.mesh.fsdp = 1
  config.mesh.tensor = 1

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
  config.model.attention_impl = "custom_vjp"  # "custom_vjp" | "autodiff"
  config.model.attention_query_blocks = 4  # causal query blocks of the custom attention
  config.model.logp_chunk_size = 0  # >0: lm_head + logsumexp over chunks of positions
  # "all": lm_head on every position; "completion": only on the completion window, with a
  # fused backward (training/fused_logprobs.py; experiments/benchmark.py only, for now).
  config.model.logits_on = "all"
  return config
