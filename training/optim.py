"""The optimizer: AdamW behind global-norm clipping, with warmup then decay.

    lr(s) = lr_peak * s / warmup                         for s < warmup
    lr(s) = lr_peak * decay((s - warmup) / (total - warmup))  afterwards

with decay cosine (to `end_lr_factor`), linear (to `end_lr_factor`) or constant.
"""

from __future__ import annotations

import optax


def learning_rate_schedule(opt_cfg, total_steps: int) -> optax.Schedule:
  peak = float(opt_cfg.learning_rate)
  warmup = int(opt_cfg.warmup_steps)
  end = peak * float(opt_cfg.end_lr_factor)
  decay_steps = max(total_steps - warmup, 1)
  if opt_cfg.decay == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=float(opt_cfg.end_lr_factor))
  elif opt_cfg.decay == "linear":
    decay = optax.linear_schedule(peak, end, decay_steps)
  elif opt_cfg.decay == "constant":
    decay = optax.constant_schedule(peak)
  else:
    raise ValueError(f"config.optimizer.decay must be cosine|linear|constant, got {opt_cfg.decay!r}")
  if warmup == 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def make_optimizer(opt_cfg, total_steps: int) -> optax.GradientTransformation:
  schedule = learning_rate_schedule(opt_cfg, total_steps)
  chain = []
  if float(opt_cfg.grad_clip_norm) > 0:
    chain.append(optax.clip_by_global_norm(float(opt_cfg.grad_clip_norm)))
  chain.append(optax.adamw(schedule, b1=float(opt_cfg.b1), b2=float(opt_cfg.b2),
                           eps=float(opt_cfg.eps), weight_decay=float(opt_cfg.weight_decay)))
  return optax.chain(*chain)
