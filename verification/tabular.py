"""Tabular autoregressive policies over a finite set of responses, for the small worlds.

A world has a few prompts x and, per prompt, a finite prefix-free set of responses y, each a
tuple of token ids. The responses of one prompt form a prefix tree (trie); the policy puts a
softmax over the children of every internal node, so

    π(y | x) = Π_t π(y_t | x, y_<t),   log π(y_t | x, y_<t) = θ_e − logsumexp_{e' ∈ sib(e)} θ_e',

with one free logit θ_e per edge e of the forest. Every distribution with full support over
the responses is reachable (the map from logits to sequence distributions is onto), so the
closed-form optima of the small worlds are attainable, and the per-token log-probs [R, T]
the losses see have real token-level structure (shared prefixes, branching positions,
deterministic tails).

Single-token worlds are the special case of depth-1 trees.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


@dataclasses.dataclass(frozen=True)
class TreeSpace:
  """The responses of every prompt and the edges of their prefix forest.

  Attributes (R responses in all, E edges, N internal nodes, T the longest response):
    responses: per prompt, the tuple of token tuples (the response order used everywhere).
    prompt_of: [R] prompt index of each response.
    offsets: [X + 1] responses of prompt x are rows offsets[x]:offsets[x + 1].
    edge_parent: [E] internal-node id of each edge's parent.
    path: [R, T] edge index of the t-th token of each response (0 where masked).
    mask: [R, T] 1 on the response's tokens (right padding).
    lengths: [R] number of tokens.
  """

  responses: tuple[tuple[tuple[int, ...], ...], ...]
  prompt_of: np.ndarray
  offsets: np.ndarray
  edge_parent: np.ndarray
  num_nodes: int
  path: np.ndarray
  mask: np.ndarray
  lengths: np.ndarray

  @property
  def num_prompts(self) -> int:
    return len(self.responses)

  @property
  def num_responses(self) -> int:
    return int(self.prompt_of.shape[0])

  @property
  def num_edges(self) -> int:
    return int(self.edge_parent.shape[0])

  def rows(self, x: int) -> np.ndarray:
    return np.arange(self.offsets[x], self.offsets[x + 1])


def build_space(responses: Sequence[Sequence[Sequence[int]]]) -> TreeSpace:
  """Builds the prefix forest of `responses[x] = [y_1, y_2, ...]` (token tuples).

  Each prompt's set must be prefix-free (end every response with an end token), so that
  the responses are exactly the leaves and their probabilities sum to 1.
  """
  responses = tuple(tuple(tuple(int(t) for t in y) for y in ys) for ys in responses)
  edge_parent: list[int] = []
  edge_of: dict[tuple, int] = {}  # (node id, token) -> edge id
  child_node: dict[int, int] = {}  # edge id -> node id of the child (internal nodes only)
  num_nodes = 0
  paths, prompt_of = [], []
  for x, ys in enumerate(responses):
    if len(set(ys)) != len(ys):
      raise ValueError(f"prompt {x}: duplicate responses")
    for y in ys:
      for other in ys:
        if other != y and other[:len(y)] == y:
          raise ValueError(f"prompt {x}: response {y} is a prefix of {other}")
    root = num_nodes
    num_nodes += 1
    for y in ys:
      if not y:
        raise ValueError(f"prompt {x}: empty response")
      node, path = root, []
      for i, token in enumerate(y):
        key = (node, token)
        if key not in edge_of:
          edge_of[key] = len(edge_parent)
          edge_parent.append(node)
        e = edge_of[key]
        path.append(e)
        if i + 1 < len(y):
          if e not in child_node:
            child_node[e] = num_nodes
            num_nodes += 1
          node = child_node[e]
      paths.append(path)
      prompt_of.append(x)
  t_max = max(len(p) for p in paths)
  path_arr = np.zeros((len(paths), t_max), np.int32)
  mask = np.zeros((len(paths), t_max), np.float32)
  for r, p in enumerate(paths):
    path_arr[r, :len(p)] = p
    mask[r, :len(p)] = 1.0
  offsets = np.cumsum([0] + [len(ys) for ys in responses])
  return TreeSpace(responses, np.asarray(prompt_of, np.int32), offsets,
                   np.asarray(edge_parent, np.int32), num_nodes, path_arr, mask,
                   mask.sum(-1).astype(np.int32))


def edge_log_probs(space: TreeSpace, logits: Array) -> Array:
  """[E] log π(child | node): a log-softmax over the siblings of every edge."""
  parent = jnp.asarray(space.edge_parent)
  node_max = jax.ops.segment_max(logits, parent, num_segments=space.num_nodes)
  node_max = jax.lax.stop_gradient(node_max)
  shifted = logits - node_max[parent]
  node_sum = jax.ops.segment_sum(jnp.exp(shifted), parent, num_segments=space.num_nodes)
  return shifted - jnp.log(node_sum)[parent]


def token_log_probs(space: TreeSpace, logits: Array) -> Array:
  """[R, T] per-token log-probs of every response, 0 under mask 0."""
  per_edge = edge_log_probs(space, logits)
  return jnp.where(jnp.asarray(space.mask) > 0, per_edge[jnp.asarray(space.path)], 0.0)


def sequence_log_probs(space: TreeSpace, logits: Array) -> Array:
  """[R] log π(y | x)."""
  return jnp.sum(token_log_probs(space, logits), axis=-1)


def probs_np(space: TreeSpace, logits) -> np.ndarray:
  """[R] π(y | x) in float64 numpy, computed from the logits without JAX (for the targets)."""
  logits = np.asarray(logits, np.float64)
  log_edge = np.empty_like(logits)
  for node in range(space.num_nodes):
    idx = np.nonzero(space.edge_parent == node)[0]
    z = logits[idx]
    log_edge[idx] = z - (z.max() + np.log(np.exp(z - z.max()).sum()))
  return np.exp((log_edge[space.path] * space.mask).sum(-1))


def logits_for(space: TreeSpace, probs: np.ndarray) -> np.ndarray:
  """[E] edge logits whose policy is the sequence distribution `probs` [R] (full support).

  The conditional of an edge is the mass of the responses below it over the mass below its
  parent; its logit is the log of that conditional.
  """
  probs = np.asarray(probs, np.float64)
  below = np.zeros(space.num_edges)  # probability mass of the responses through each edge
  for r in range(space.num_responses):
    below[space.path[r, :space.lengths[r]]] += probs[r]
  node_mass = np.zeros(space.num_nodes)
  np.add.at(node_mass, space.edge_parent, below)
  return np.log(below) - np.log(node_mass[space.edge_parent])


def normalize_per_prompt(space: TreeSpace, weights: np.ndarray) -> np.ndarray:
  """[R] weights divided by their sum within each prompt."""
  weights = np.asarray(weights, np.float64)
  totals = np.zeros(space.num_prompts)
  np.add.at(totals, space.prompt_of, weights)
  return weights / totals[space.prompt_of]


def total_variation(space: TreeSpace, p: np.ndarray, q: np.ndarray,
                    prompt_weights: Optional[np.ndarray] = None) -> float:
  """Prompt-averaged total variation ½ Σ_y |p(y|x) − q(y|x)| (uniform over prompts)."""
  per_prompt = np.zeros(space.num_prompts)
  np.add.at(per_prompt, space.prompt_of, 0.5 * np.abs(np.asarray(p) - np.asarray(q)))
  if prompt_weights is None:
    return float(per_prompt.mean())
  return float(np.dot(per_prompt, prompt_weights) / np.sum(prompt_weights))


# ---------------------------------------------------------------------------------------
# Pairs: every ordered pair of distinct responses of a prompt, with its weight.


@dataclasses.dataclass(frozen=True)
class Pairs:
  """B pairs of response rows (same prompt) and their weights in the expected loss."""

  chosen: np.ndarray  # [B] response rows
  rejected: np.ndarray  # [B]
  weights: np.ndarray  # [B] float, ≥ 0

  def __len__(self) -> int:
    return int(self.chosen.shape[0])


def all_ordered_pairs(space: TreeSpace) -> tuple[np.ndarray, np.ndarray]:
  """[B] rows (a, b), a ≠ b, of every ordered pair of responses of the same prompt."""
  chosen, rejected = [], []
  for x in range(space.num_prompts):
    rows = space.rows(x)
    for a in rows:
      for b in rows:
        if a != b:
          chosen.append(a)
          rejected.append(b)
  return np.asarray(chosen, np.int32), np.asarray(rejected, np.int32)


def labelled_pairs(space: TreeSpace, win_prob: Callable[[int, int], float],
                   pair_prob: Callable[[int, int], float]) -> Pairs:
  """The exact distribution of labelled pairs as ordered (chosen, rejected) rows.

  The ordered draw (a, b) has probability μ(a, b) = pair_prob(a, b) and is labelled a ≻ b
  with probability P(a ≻ b) = win_prob(a, b). Summed over both draw orders, the row
  (chosen=a, rejected=b) has weight [μ(a, b) + μ(b, a)]·P(a ≻ b). Rows of weight 0 are
  dropped.
  """
  chosen, rejected = all_ordered_pairs(space)
  weights = np.array([(pair_prob(a, b) + pair_prob(b, a)) * win_prob(a, b)
                      for a, b in zip(chosen, rejected)], np.float64)
  keep = weights > 0
  return Pairs(chosen[keep], rejected[keep], weights[keep])


def gather(arr, rows: np.ndarray):
  """arr[rows] for a [R, ...] array (None passes through)."""
  if arr is None:
    return None
  return jnp.asarray(arr)[jnp.asarray(rows)]


# ---------------------------------------------------------------------------------------
# Minimisation of exact expected losses.


def minimize(objective: Callable[[Array], Array], params: Array, *, steps: int,
             method: str = "lbfgs", learning_rate: float = 0.05,
             trace: bool = False):
  """Minimises `objective(params)` with optax, inside one jitted `lax.scan`.

  method "lbfgs" (optax.lbfgs with its zoom line search) for smooth losses with a finite
  minimiser; "adam" for losses whose infimum is at infinity (deterministic labels) or that
  are semi-gradient (stop-gradient weights), where a line search has no fixed objective.
  Returns the final params, and with trace=True also the objective at every step [steps].
  """
  if method == "lbfgs":
    opt = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    def step(carry, _):
      p, state = carry
      value, grad = value_and_grad(p, state=state)
      updates, state = opt.update(grad, state, p, value=value, grad=grad,
                                  value_fn=objective)
      return (optax.apply_updates(p, updates), state), value
  elif method == "adam":
    opt = optax.adam(learning_rate)

    def step(carry, _):
      p, state = carry
      value, grad = jax.value_and_grad(objective)(p)
      updates, state = opt.update(grad, state, p)
      return (optax.apply_updates(p, updates), state), value
  else:
    raise ValueError(f"unknown method {method!r}")

  @jax.jit
  def run(p):
    (p, _), values = jax.lax.scan(step, (p, opt.init(p)), None, length=steps)
    return p, values

  params, values = run(jnp.asarray(params, jnp.float32))
  return (params, values) if trace else params
