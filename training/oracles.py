"""Preference oracles behind one small interface: who says which response is better.

    oracle = make_oracle(config, tokenizer, mesh)      # from config.online.scorer
    judgement = oracle.judge(candidates)               # Candidates -> Judgement

An online round samples K responses to each of N prompts (`Candidates`) and asks an oracle
for the [N, K, K] table of pairwise preferences P(y_i ≻ y_j | x) and its logit-scale score
table s(y_i ≻ y_j) (`Judgement`), which the pairwise methods (DNO, INPO, GPO) train on.
Four oracles (`ORACLES`, the values of `config.online.scorer`):

  verifier   a rule: the built-in digit-sorting task's (`data.synthetic.score` / `verify`),
             or a math answer checked against the record's reference `answer`
             (`data.math_answers`): a reward r per response; P = 1[r_i > r_j] +
             ½·1[r_i = r_j], s = (r_i − r_j)/τ. Also returns the rewards and 0/1
             correctness.
  gpm        a trained General Preference embedding Model (Zhang et al. 2025, "Beyond
             Bradley-Terry Models: A General Preference Model for Language Model
             Alignment", arXiv 2410.02197): s = ⟨R v_i, v_j⟩/τ
             (`algorithms.preference.gpm_score_table`), P = σ(s).
  bt_reward  a trained Bradley-Terry reward model (Bradley & Terry 1952): a scalar r per
             response, s = (r_i − r_j)/τ, P = σ(s), the P(y ≻ y') = σ((r − r')/τ) that
             `algorithms.preference.bt_reward` is trained on.
  judge      a user-supplied Python callable "package.module:function", a batched pairwise
             judge (how an LLM judge is plugged in): fn(prompts, first, second) -> one
             P(first ≻ second) per pair; s = logit(P).

In every table P_ij + P_ji = 1, P_ii = ½, s_ij = −s_ji and s_ii = 0; s is on the logit scale
of P (already divided by the model's τ), the form GPO's targets read
(`algorithms.gpo.gpo_targets`). The verifier is the one exception to P = σ(s): its P is the
hard 0 / ½ / 1 comparison of the rewards.

The model oracles score the N·K (prompt, response) rows with one jitted forward
(`training.step.head_values`) in fixed-size chunks, sharded over the mesh's batch axes
(`training.mesh.put_batch`), with the token ids as the policy sampled them: the scorer must
share the policy's tokenizer.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import numbers
import os
from typing import Callable, Protocol

import jax
import numpy as np
from absl import logging

from data import synthetic
from training import multihost  # jax and numpy only: keeps this module light

ORACLES = ("verifier", "gpm", "bt_reward", "judge")
# The scorers that are a trained preference model's workdir (`config.online.scorer_path`).
MODEL_ORACLES = ("gpm", "bt_reward")
# Clip of a judge's probability before the logit: |s| <= logit(1 − 1e-6) ≈ 13.8, so a
# judge's certain 0 or 1 gives a large but finite score.
_JUDGE_EPS = 1e-6


class OracleError(ValueError):
  """An oracle could not judge the candidates (a judge raised or returned a bad value, a
  prompt the verifier has no rule for); the message names the oracle and the prompt."""


@dataclasses.dataclass(frozen=True)
class Candidates:
  """K responses to each of N prompts."""
  prompts: list[str]                  # N prompt texts
  prompt_ids: list[list[int]]         # N token ids as the policy saw them ([bos] + prompt)
  completions: list[list[list[int]]]  # [N][K] completion ids; eos included iff the model emitted it
  texts: list[list[str]]              # [N][K] decoded completions (eos removed)
  # N reference answers of the prompts' records (a math dataset's `answer` field; None where
  # a record has none), read by the verifier only
  answers: list[str | None] | None = None


@dataclasses.dataclass(frozen=True)
class Judgement:
  """An oracle's verdict on `Candidates`: every ordered pair of each prompt's responses."""
  # [N, K, K] float32 P(y_i ≻ y_j | x); P_ij + P_ji = 1; 0.5 on the diagonal
  preferences: np.ndarray
  # [N, K, K] float32 antisymmetric score s(y_i ≻ y_j), on the logit scale of P (GPO's score
  # table; already divided by the model's τ)
  scores: np.ndarray
  rewards: np.ndarray | None = None  # [N, K] the verifier's reward (verifier only)
  correct: np.ndarray | None = None  # [N, K] 1.0/0.0 correctness (verifier only)


class Oracle(Protocol):
  """What a round needs from an oracle: a name (one of ORACLES, recorded with the round)
  and `judge`, batched over all N prompts at once."""
  name: str

  def judge(self, candidates: Candidates) -> Judgement:
    ...


# ---------------------------------------------------------------------------------------
# Helpers shared by the oracles.


def _shorten(text: str, limit: int = 60) -> str:
  """repr of `text`, cut to about `limit` characters (error messages quote prompts)."""
  return repr(text if len(text) <= limit else text[:limit - 3] + "...")


def _shape(candidates: Candidates) -> tuple[int, int]:
  """(N, K), after checking that every field has N prompts and every prompt K responses."""
  n = len(candidates.prompts)
  for field in ("prompt_ids", "completions", "texts"):
    if len(getattr(candidates, field)) != n:
      raise OracleError(f"Candidates.{field} has {len(getattr(candidates, field))} entries "
                        f"for {n} prompts")
  if n == 0:
    return 0, 0
  k = len(candidates.completions[0])
  for i in range(n):
    for field in ("completions", "texts"):
      if len(getattr(candidates, field)[i]) != k:
        raise OracleError(
            f"Candidates.{field}[{i}] has {len(getattr(candidates, field)[i])} responses, "
            f"expected K={k} like prompt 0 (prompt {i}: {_shorten(candidates.prompts[i])})")
  return n, k


def _symmetric(upper: np.ndarray) -> np.ndarray:
  """[N, K, K] P from the entries above the diagonal (i < j): P_ji = 1 − P_ij, P_ii = ½,
  set by symmetry rather than computed again, so that they hold exactly."""
  upper = np.asarray(upper, np.float64)
  k = upper.shape[-1]
  above = np.triu(np.ones((k, k), bool), 1)
  p = np.where(above, upper, 0.0)
  return p + np.where(above.T, 1.0 - np.swapaxes(p, -1, -2), 0.0) + 0.5 * np.eye(k)


def _from_probabilities(upper: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[N, K, K] float32 (preferences, scores) from P(y_i ≻ y_j) above the diagonal:
  s_ij = logit(clip(P_ij, ε, 1 − ε)) for i < j, s_ji = −s_ij, s_ii = 0."""
  p = _symmetric(upper)
  k = p.shape[-1]
  clipped = np.clip(p, _JUDGE_EPS, 1.0 - _JUDGE_EPS)
  s = np.where(np.triu(np.ones((k, k), bool), 1), np.log(clipped) - np.log1p(-clipped), 0.0)
  return p.astype(np.float32), (s - np.swapaxes(s, -1, -2)).astype(np.float32)


def _from_scores(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """[N, K, K] float32 (preferences σ(s), scores s) of a model's score table (already / τ).

  The table is made exactly antisymmetric ((s − sᵀ)/2: XLA may fuse the two products of
  ⟨R v_i, v_j⟩ differently for (i, j) and (j, i)), and P_ji is set to 1 − P_ij.
  """
  s = np.asarray(scores, np.float64)
  s = 0.5 * (s - np.swapaxes(s, -1, -2))
  p = _symmetric(0.5 * (1.0 + np.tanh(0.5 * s)))  # σ(s), no overflow for large |s|
  return p.astype(np.float32), s.astype(np.float32)


# ---------------------------------------------------------------------------------------
# The built-in task's verifier.


class VerifierOracle:
  """A rule-based verifier as a preference oracle: each response gets a reward r_ik and a
  0/1 correctness, from one of two rules.

    math answers  a prompt whose record carries a reference `answer` (GSM8K, MATH, a
                  PRIME-style RL set): r = correct = 1 iff the completion's final answer
                  (its last \\boxed{...}, else `#### x`, "the answer is x", the last number)
                  equals the reference (`data.math_answers.is_correct`), the outcome reward
                  of PRIME (Cui et al. 2025, arXiv 2502.01456, Sec. 2);
    digit sorting a prompt of the built-in task: r = `data.synthetic.score(prompt, text)` (1
                  for a correct sorting, partial credit below ½ otherwise), correct =
                  `verify(prompt, text)`.

  Both only for a completion that ends with eos, else r = correct = 0: a response cut off at
  max_new_tokens never wins on content it did not finish. Then

      P(y_i ≻ y_j) = 1[r_i > r_j] + ½·1[r_i = r_j],   s(y_i ≻ y_j) = (r_i − r_j) / τ.
  """

  name = "verifier"

  def __init__(self, tokenizer, tau: float = 1.0):
    if not tau > 0:
      raise ValueError(f"VerifierOracle: tau must be > 0, got {tau!r}")
    self.eos_id = int(tokenizer.eos_id)
    self.tau = float(tau)

  @staticmethod
  def rule(prompt: str, answer) -> Callable[[str], tuple[float, float]] | None:
    """text -> (reward, correct) for this prompt, or None when neither rule applies."""
    if answer is not None:
      from data import math_answers  # local: only math data needs it

      def by_answer(text):
        correct = float(math_answers.is_correct(text, answer))
        return correct, correct
      return by_answer
    try:
      synthetic.parse_prompt(prompt)
    except ValueError:
      return None
    return lambda text: (synthetic.score(prompt, text), float(synthetic.verify(prompt, text)))

  def judges(self, candidates: Candidates) -> bool:
    """Whether every prompt has a rule (eval accuracy is reported only then)."""
    answers = candidates.answers or [None] * len(candidates.prompts)
    return all(self.rule(p, a) is not None for p, a in zip(candidates.prompts, answers))

  def judge(self, candidates: Candidates) -> Judgement:
    n, k = _shape(candidates)
    answers = candidates.answers or [None] * n
    rewards = np.zeros((n, k), np.float32)
    correct = np.zeros((n, k), np.float32)
    for i, prompt in enumerate(candidates.prompts):
      rule = self.rule(prompt, answers[i])
      if rule is None:
        raise OracleError(f"verifier: prompt {i} {_shorten(prompt)} has no rule: it is not a "
                          "digit-sorting prompt of the built-in task and its record has no "
                          "'answer' field (give the data's reference answers, or use "
                          "config.online.scorer 'gpm', 'bt_reward' or 'judge')")
      for j, (ids, text) in enumerate(zip(candidates.completions[i], candidates.texts[i])):
        if list(ids[-1:]) == [self.eos_id]:
          rewards[i, j], correct[i, j] = rule(text)
    diff = rewards[:, :, None] - rewards[:, None, :]
    preferences = ((diff > 0) + 0.5 * (diff == 0)).astype(np.float32)
    scores = (diff.astype(np.float64) / self.tau).astype(np.float32)
    return Judgement(preferences=preferences, scores=scores, rewards=rewards, correct=correct)


# ---------------------------------------------------------------------------------------
# A trained GPM or BT reward model.


def read_run_config(workdir: str, what: str) -> dict:
  """The JSON of `workdir`/config.json, with errors that name the path."""
  if not workdir:
    raise FileNotFoundError(f"{what}: no workdir given (expected the workdir of a finished "
                            "`gpm` or `bt_reward` run)")
  if not os.path.isdir(workdir):
    raise FileNotFoundError(f"{what}: {workdir!r} does not exist or is not a directory "
                            "(expected the workdir of a finished `gpm` or `bt_reward` run)")
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{what}: no config.json in {workdir!r} (expected the workdir of "
                            "a finished `gpm` or `bt_reward` run)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"{what}: cannot read {path}: {e}") from None


def _run_loss_name(run: dict) -> str:
  loss = run.get("loss")
  return loss.get("name", "") if isinstance(loss, dict) else ""


def _round_up(x: int, multiple: int) -> int:
  return -(-x // multiple) * multiple


class PreferenceModelOracle:
  """A trained GPM (`gpm`) or Bradley-Terry reward model (`bt_reward`) as an oracle.

  Every (prompt, response) row goes through the model once (`training.step.head_values`,
  the head read at the last token, GPM's prompt gates λ(x) at the last prompt token):

    gpm        v_ik ∈ ℝ^{2k}; s(y_i ≻ y_j) = ⟨R(λ(x)) v_i, v_j⟩ / τ (Zhang et al. 2025, arXiv
               2410.02197; `algorithms.preference.gpm_score_table`), P = σ(s);
    bt_reward  r_ik ∈ ℝ; s(y_i ≻ y_j) = (r_i − r_j) / τ, P = σ(s) (Bradley-Terry, the
               σ((r_w − r_l)/τ) of `algorithms.preference.bt_reward`);

  τ = the scorer run's `config.loss.preference_tau`, so P is the probability the model was
  trained to predict.

  Batched: the N·K rows are cut into chunks of `batch_size` rows (rounded up to a multiple
  of the mesh's batch-axis size, data × fsdp, as `put_batch` needs), the last chunk filled
  with copies of a real row, every chunk padded to one sequence length per `judge` call, so
  a call compiles the forward once; each chunk is placed sharded over the mesh's batch axes.
  """

  def __init__(self, name: str, config, graphdef, params, mesh, *, batch_size: int = 32,
               workdir: str = "", pad_id: int = 0):
    if name not in MODEL_ORACLES:
      raise ValueError(f"PreferenceModelOracle: name must be one of {list(MODEL_ORACLES)}, "
                       f"got {name!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"PreferenceModelOracle: batch_size must be an int >= 1, got "
                       f"{batch_size!r}")
    # local: `import training.oracles` stays light (config_check imports it)
    from training.experiment import model_config
    from training.mesh import batch_divisor

    self.name = name
    self.config = config
    self.workdir = workdir
    self.tau = float(config.loss.preference_tau)
    self.mesh = mesh
    self.graphdef = graphdef
    # Any valid id: pad positions are masked out of attention and never read.
    self.pad_id = int(pad_id)
    # The model's shape as the run built it (read from the HF checkpoint with init_from).
    shape = model_config(config)
    self.vocab_size = int(shape.vocab_size)
    self.max_positions = int(getattr(shape, "max_position_embeddings", 0) or 0)
    # put_batch splits the leading axis over data x fsdp, and each process passes its own
    # equal slice of it.
    self.row_multiple = math.lcm(batch_divisor(mesh), jax.process_count())
    self.batch_size = _round_up(batch_size, self.row_multiple)
    self.params = self._place(graphdef, params, mesh)
    self._forward = None

  @classmethod
  def from_workdir(cls, workdir: str, mesh, batch_size: int = 32) -> PreferenceModelOracle:
    """The oracle of a finished `gpm` or `bt_reward` run (its config.json and newest
    checkpoint, `training.experiment.load_trained`); any other loss is refused."""
    run = read_run_config(workdir, "PreferenceModelOracle")
    loss = _run_loss_name(run)
    if loss not in MODEL_ORACLES:
      raise ValueError(f"{workdir!r} is a {loss!r} run (config.loss.name in its config.json); "
                       f"a preference-model oracle needs a finished {' or '.join(MODEL_ORACLES)}"
                       " run")
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise FileNotFoundError(f"PreferenceModelOracle: no checkpoints directory in "
                              f"{workdir!r} (has the {loss!r} run finished?)")
    from training.experiment import load_trained  # local: it imports much of the code base

    # Restored into the model's layout on `mesh`: on several hosts each reads its shards.
    config, graphdef, params = load_trained(workdir, mesh=mesh)
    logging.info("oracle %s: loaded %s (τ = %s)", loss, workdir, config.loss.preference_tau)
    return cls(loss, config, graphdef, params, mesh, batch_size=batch_size, workdir=workdir)

  @staticmethod
  def _place(graphdef, params, mesh):
    """params laid out on `mesh` by the model's logical-axis rules (params given in memory
    may sit on one device, and the forward runs with batches spread over the whole mesh;
    `from_workdir`'s are restored in this layout already, so this is a no-op for them)."""
    import models
    from flax import nnx

    state = nnx.state(nnx.merge(graphdef, params), nnx.Param)
    specs = models.param_partition_specs(state, mesh)
    shardings = jax.tree.map(lambda spec: jax.sharding.NamedSharding(mesh, spec), specs,
                             is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))
    return jax.device_put(params, shardings)

  def _length(self, longest: int) -> int:
    """The padded sequence length of a call: rounded up to a multiple of 32 so successive
    rounds usually reuse one compilation, unless that passes the model's position limit."""
    length = _round_up(longest, 32)
    if self.max_positions and length > self.max_positions:
      length = max(longest, self.max_positions)
    return length

  def head_outputs(self, candidates: Candidates) -> tuple[np.ndarray, np.ndarray | None]:
    """values [N, K, D] (D = 1 for BT, 2k for GPM) and the GPM prompt gates [N, k] (None
    without a prompt head) of every response, in float32."""
    from data.pipeline import TokenizedPair, collate
    from training.mesh import put_batch
    from training.step import head_values

    n, k = _shape(candidates)
    rows = []
    for i in range(n):
      prompt = np.asarray(candidates.prompt_ids[i], np.int32)
      if prompt.size == 0:
        raise OracleError(f"oracle {self.name}: prompt {i} {_shorten(candidates.prompts[i])} "
                          "has no token ids")
      for j in range(k):
        ids = np.asarray(candidates.completions[i][j], np.int32)
        for part in (prompt, ids):
          if part.size and (part.min() < 0 or part.max() >= self.vocab_size):
            raise OracleError(
                f"oracle {self.name} ({self.workdir or 'in memory'}): prompt {i} "
                f"{_shorten(candidates.prompts[i])}, response {j}: token id "
                f"{int(part.max() if part.max() >= self.vocab_size else part.min())} outside "
                f"the scorer's vocabulary [0, {self.vocab_size}) (does it share the policy's "
                "tokenizer?)")
        rows.append(TokenizedPair(len(rows), prompt, ids, None))
    if not rows:
      return np.zeros((n, k, 0), np.float32), None
    if self._forward is None:
      graphdef = self.graphdef
      self._forward = jax.jit(lambda p, b: head_values(graphdef, p, b)[::2])
    length = self._length(max(len(r.prompt) + len(r.chosen) for r in rows))
    # One chunk shape per call: no bigger than the rows need, a multiple of the mesh's.
    chunk = min(self.batch_size, _round_up(len(rows), self.row_multiple))
    per_process, index = chunk // jax.process_count(), jax.process_index()
    values, gates = [], []
    for start in range(0, len(rows), chunk):
      part = rows[start:start + chunk]
      part = part + [part[0]] * (chunk - len(part))  # filler rows: copies, dropped below
      batch = collate(part, length, self.pad_id)
      del batch["example_id"]  # int64 ids: not model inputs
      local = {key: v[index * per_process:(index + 1) * per_process] for key, v in batch.items()}
      v, g = self._forward(self.params, put_batch(local, self.mesh))
      values.append(multihost.host_value(v)[:len(rows) - start])
      if g is not None:
        gates.append(multihost.host_value(g)[:len(rows) - start])
    values = np.concatenate(values).astype(np.float32).reshape(n, k, -1)
    # The K rows of a prompt share its gates λ(x); take the first row's.
    gates = np.concatenate(gates).astype(np.float32).reshape(n, k, -1)[:, 0] if gates else None
    return values, gates

  def judge(self, candidates: Candidates) -> Judgement:
    from algorithms.preference import bt_score_table, gpm_score_table

    n, k = _shape(candidates)
    if n == 0 or k == 0:
      empty = np.zeros((n, k, k), np.float32)
      return Judgement(preferences=empty + 0.5, scores=empty)
    values, gates = self.head_outputs(candidates)
    if self.name == "gpm":
      table = gpm_score_table(values, gates)
    else:
      table = bt_score_table(values[..., 0])
    table = np.asarray(jax.device_get(table), np.float64) / self.tau
    if not np.all(np.isfinite(table)):
      bad = int(np.argwhere(~np.isfinite(table))[0][0])
      raise OracleError(f"oracle {self.name} ({self.workdir or 'in memory'}): non-finite "
                        f"scores for prompt {bad} {_shorten(candidates.prompts[bad])}")
    preferences, scores = _from_scores(table)
    return Judgement(preferences=preferences, scores=scores)


# ---------------------------------------------------------------------------------------
# A user-supplied pairwise judge.


def load_judge(spec: str) -> Callable:
  """The callable named by "package.module:function" (a dotted attribute path after the
  colon, e.g. "pkg.mod:Judge.score", is followed too); ValueError naming `spec` otherwise."""
  if not isinstance(spec, str) or spec.count(":") != 1:
    raise ValueError(f"judge {spec!r}: expected 'package.module:function'")
  module_name, attr = spec.split(":")
  if not module_name or not attr:
    raise ValueError(f"judge {spec!r}: expected 'package.module:function'")
  try:
    target = importlib.import_module(module_name)
  except Exception as e:  # noqa: BLE001  (a module can raise anything on import)
    raise ValueError(f"judge {spec!r}: cannot import module {module_name!r}: "
                     f"{type(e).__name__}: {e}") from None
  for part in attr.split("."):
    if not hasattr(target, part):
      raise ValueError(f"judge {spec!r}: module {module_name!r} has no attribute {attr!r}")
    target = getattr(target, part)
  if not callable(target):
    raise ValueError(f"judge {spec!r}: {attr!r} is a {type(target).__name__}, not a callable")
  return target


def _probability(value) -> float | None:
  """float(value) for a real number (Python, numpy scalar or 0-d array), else None."""
  if isinstance(value, (str, bytes)) or not isinstance(
      value, (numbers.Real, np.generic, np.ndarray, jax.Array)):
    return None
  arr = np.asarray(value)
  if arr.shape != () or arr.dtype.kind not in "biuf":
    return None
  return float(arr)


class CallableOracle:
  """A pairwise judge written in Python, e.g. a wrapper around an LLM judge.

  `spec` = "package.module:function" (or the function itself), called once per `judge` with
  every unordered pair i < j of every prompt's K responses, N·K(K−1)/2 pairs:

      fn(prompts: list[str], first: list[str], second: list[str]) -> Sequence[float]

  each value P(first ≻ second | prompt) in [0, 1]. The table is filled by symmetry:
  P_ij from the judge, P_ji = 1 − P_ij, P_ii = ½, s_ij = logit(clip(P_ij, 1e-6, 1 − 1e-6)),
  s_ji = −s_ij. The judge sees each pair in one order only (response i first); a judge with
  position bias should randomise or average both orders itself.

  On several processes only process 0 calls the judge (an API is paid per call, and its
  answers need not repeat); the others receive its tables (`training.multihost`).
  """

  name = "judge"

  def __init__(self, spec: str | Callable):
    if callable(spec) and not isinstance(spec, str):
      self.fn = spec
      self.spec = (f"{getattr(spec, '__module__', '?')}:"
                   f"{getattr(spec, '__qualname__', type(spec).__name__)}")
    else:
      self.fn = load_judge(spec)
      self.spec = spec

  def _where(self, candidates: Candidates, pairs, index: int) -> str:
    i, a, b = pairs[index]
    return (f"pair {index} (prompt {i} {_shorten(candidates.prompts[i])}, responses {a} and "
            f"{b})")

  def judge(self, candidates: Candidates) -> Judgement:
    n, k = _shape(candidates)
    if jax.process_count() == 1:
      return self._judge(candidates, n, k)
    judgement = error = None
    if multihost.is_main():
      try:
        judgement = self._judge(candidates, n, k)
      except OracleError as e:
        error = e
    if multihost.process_0_says(error is not None):
      raise error or OracleError(f"judge {self.spec} failed on process 0 (its error is in "
                                 "process 0's output)")
    empty = np.zeros((n, k, k), np.float32)
    tables = multihost.from_process_0(
        {"preferences": empty if judgement is None else judgement.preferences,
         "scores": empty if judgement is None else judgement.scores})
    return Judgement(**tables)

  def _judge(self, candidates: Candidates, n: int, k: int) -> Judgement:
    """The judge's tables, from one call of the judge on this process."""
    pairs = [(i, a, b) for i in range(n) for a in range(k) for b in range(a + 1, k)]
    upper = np.zeros((n, k, k), np.float64)
    if pairs:
      prompts = [candidates.prompts[i] for i, _, _ in pairs]
      first = [candidates.texts[i][a] for i, a, _ in pairs]
      second = [candidates.texts[i][b] for i, _, b in pairs]
      try:
        out = self.fn(prompts, first, second)
      except Exception as e:  # noqa: BLE001  (a user's judge can raise anything)
        shown = ", ".join(f"prompt {i} {_shorten(candidates.prompts[i])}"
                          for i in range(min(n, 2)))
        raise OracleError(
            f"judge {self.spec} raised {e!r} on a batch of {len(pairs)} pairs of {n} "
            f"prompt{'s' if n != 1 else ''} ({shown}{', ...' if n > 2 else ''})") from e
      try:
        out = list(np.asarray(out).reshape(-1)) if isinstance(out, (np.ndarray, jax.Array)) \
            else list(out)
      except TypeError:
        raise OracleError(f"judge {self.spec} returned {type(out).__name__} {out!r:.80}, not "
                          f"a sequence of {len(pairs)} probabilities (first "
                          f"{self._where(candidates, pairs, 0)})") from None
      if len(out) != len(pairs):
        raise OracleError(
            f"judge {self.spec} returned {len(out)} values for {len(pairs)} pairs (one "
            f"P(first ≻ second) per pair is expected; first "
            f"{self._where(candidates, pairs, 0)})")
      for index, ((i, a, b), value) in enumerate(zip(pairs, out)):
        p = _probability(value)
        if p is None:
          problem = "not a number"
        elif not math.isfinite(p):
          problem = "not finite"
        elif not 0.0 <= p <= 1.0:
          problem = "outside [0, 1]"
        else:
          upper[i, a, b] = p
          continue
        raise OracleError(f"judge {self.spec} returned {value!r} for "
                          f"{self._where(candidates, pairs, index)}: {problem} (each value "
                          "must be P(first ≻ second) in [0, 1])")
    preferences, scores = _from_probabilities(upper)
    return Judgement(preferences=preferences, scores=scores)


# ---------------------------------------------------------------------------------------
# From the config.


def check_oracle_config(online) -> None:
  """Refuses a `config.online` whose oracle cannot work, before any compute.

  scorer in ORACLES; "gpm" / "bt_reward": `scorer_path` is the workdir of a finished run of
  that loss (config.json and checkpoints there); "judge": `judge` = "module:function"
  imports and is callable. Raises `training.config_check.ConfigError` (a ValueError).
  """
  from training.config_check import ConfigError  # local: config_check imports this module

  scorer = online.scorer
  if scorer not in ORACLES:
    raise ConfigError(f"config.online.scorer must be one of {list(ORACLES)}, got {scorer!r}")
  if scorer in MODEL_ORACLES:
    path = online.get("scorer_path", "")
    where = f"config.online.scorer={scorer!r}, config.online.scorer_path={path!r}"
    if not path:
      raise ConfigError(f"config.online.scorer={scorer!r} needs config.online.scorer_path, "
                        f"the workdir of a finished `{scorer}` run")
    try:
      run = read_run_config(path, where)
    except (OSError, ValueError) as e:
      raise ConfigError(str(e)) from None
    loss = _run_loss_name(run)
    if loss != scorer:
      raise ConfigError(f"{where}: that workdir is a {loss!r} run (config.loss.name in its "
                        f"config.json), not a `{scorer}` run")
    if not os.path.isdir(os.path.join(path, "checkpoints")):
      raise ConfigError(f"{where}: no checkpoints directory there (has the run finished?)")
  if scorer == "judge":
    spec = online.get("judge", "")
    if not spec:
      raise ConfigError("config.online.scorer='judge' needs config.online.judge = "
                        "'package.module:function', a batched pairwise judge "
                        "fn(prompts, first, second) -> P(first ≻ second) per pair")
    try:
      load_judge(spec)
    except ValueError as e:
      raise ConfigError(f"config.online.judge: {e}") from None


def make_oracle(config, tokenizer, mesh) -> Oracle:
  """The oracle `config.online.scorer` names (validated by `check_oracle_config`)."""
  online = config.online
  check_oracle_config(online)
  scorer = online.scorer
  if scorer == "verifier":
    return VerifierOracle(tokenizer, tau=config.online.verifier_tau)
  if scorer == "judge":
    return CallableOracle(online.judge)
  oracle = PreferenceModelOracle.from_workdir(online.scorer_path, mesh)
  # The scorer reads the policy's token ids as they are: warn when the runs name different
  # tokenizers (the same files under two paths are fine, hence no error).
  theirs = oracle.config.data.get("tokenizer", "")
  if theirs != config.data.get("tokenizer", ""):
    logging.warning("oracle %s: the scorer run %s used tokenizer %r, this run %r; the scorer "
                    "reads this run's token ids unchanged", scorer, online.scorer_path, theirs,
                    config.data.get("tokenizer", ""))
  return oracle


def verifier_for(config, tokenizer, candidates: Candidates) -> VerifierOracle | None:
  """The verifier when it has a rule for every one of `candidates`' prompts (the built-in
  task, or records with reference answers), for the accuracy of an evaluation; else None."""
  verifier = VerifierOracle(tokenizer, tau=config.online.verifier_tau)
  return verifier if verifier.judges(candidates) else None


__all__ = ["ORACLES", "MODEL_ORACLES", "Candidates", "Judgement", "Oracle", "OracleError",
           "VerifierOracle", "PreferenceModelOracle", "CallableOracle", "check_oracle_config",
           "make_oracle", "verifier_for", "load_judge"]
