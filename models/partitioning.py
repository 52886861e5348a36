"""Logical-axis sharding rules for the model parameters.

Every parameter carries its logical axes as NNX Variable metadata, e.g.
`nnx.Param(w, logical_axes=('embed', 'mlp'))` (see `models/llama.py`).
Rules map each logical name to a mesh axis, so one model can be laid out on
any `('data', 'fsdp', 'tensor')` mesh without touching the model code.

Logical names used by the model:
  'vocab'     V, token embedding rows / logits
  'embed'     D, the residual stream
  'mlp'       F, the MLP hidden units
  'heads'     N, query heads
  'kv_heads'  K, key/value heads
  'head_dim'  H, per-head width
  'norm'      D, RMSNorm scales (tiny: always replicated)

Pytree shapes: `logical_axes` and `param_partition_specs` return nested dicts
with the same structure as `nnx.to_pure_dict(nnx.state(model, nnx.Param))`
(e.g. `{'layers': {0: {'attn': {'q_proj': ...}}}}`), with a tuple of logical
names or a `PartitionSpec` at each leaf. So
`jax.device_put(nnx.to_pure_dict(state), param_shardings(...))` works.

Activations: under `batch_sharded_activations(mesh)` (the train and eval steps trace the
model inside it when `config.mesh.shard_activations` is set) the model pins the leading
(batch) axis of its residual stream [B, T, D] to the mesh's batch axes ('data', 'fsdp')
after the embedding and after every block (`constrain_batch`). Without it GSPMD follows
the parameters' 'embed' -> 'fsdp' layout into the activations: every device holds the
whole micro-batch's hidden states split over D, with all-reduces of [B, T, F] MLP
activations (the compiled step on an fsdp=8 mesh), tensor parallelism over the fsdp axis
rather than FSDP; which plans less memory depends on the batch and lengths
(docs/performance.md). In that context the model also fetches a block's weights only once
the block before it has its input (`gather_after`). Outside it (sampling, oracles) nothing
changes.

Parameters carry no sharding annotations in the model code: use a mesh with
`AxisType.Auto` axes (GSPMD propagation), e.g.
`jax.make_mesh(shape, names, axis_types=(AxisType.Auto,) * 3)`;
`jax.make_mesh` defaults to Explicit axes in recent jax, under which the
embedding gather would need an explicit out_sharding.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Any, Sequence

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

# Rules are ordered (logical name, mesh axis or tuple of mesh axes or None).
# For each dimension the first applicable rule wins: one whose mesh axes
# exist in the mesh, are not already used by another dimension of the same
# parameter, and divide the dimension. A name may appear several times to
# give fallbacks. A name with no applicable rule is replicated.
Rules = Sequence[tuple[str, 'str | tuple[str, ...] | None']]

DEFAULT_RULES: Rules = (
    ('vocab', 'tensor'),
    ('embed', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('head_dim', None),
    ('norm', None),
)


# The activations' batch axes of the mesh the model is traced for (None: unconstrained).
BATCH_AXES = ('data', 'fsdp')
_ACTIVATION_BATCH: contextvars.ContextVar = contextvars.ContextVar('activation_batch',
                                                                  default=None)


@contextlib.contextmanager
def batch_sharded_activations(mesh: Mesh | None):
  """While tracing in this context, `constrain_batch` splits activations' leading axis over
  the `mesh` axes of BATCH_AXES that have more than one device (no-op without such axes)."""
  names = tuple(a for a in BATCH_AXES
                if mesh is not None and a in mesh.axis_names and mesh.shape[a] > 1)
  token = _ACTIVATION_BATCH.set((mesh, names) if names else None)
  try:
    yield
  finally:
    _ACTIVATION_BATCH.reset(token)


def constrain_batch(x):
  """`x` [B, ...] with its B axis laid out over the batch axes of the enclosing
  `batch_sharded_activations` mesh (and replicated over the others); `x` unchanged outside
  one, or when B does not divide evenly."""
  active = _ACTIVATION_BATCH.get()
  if active is None:
    return x
  mesh, names = active
  if x.shape[0] % math.prod(mesh.shape[a] for a in names):
    return x
  spec = PartitionSpec(names, *(None,) * (x.ndim - 1))
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def gather_after(tree, x):
  """(tree, x) joined by an optimization barrier inside `batch_sharded_activations`; both
  unchanged outside it.

  Under the batch-sharded layout every block all-gathers its fsdp-sharded weights. Those
  gathers depend on the parameters only, so a scheduler may issue every layer's at the start
  of the step and hold all of them through the forward: XLA:CPU's plan did (the gathered
  weights of all layers live at once, 0.77 GiB per Llama-3-8B layer on fsdp=8;
  docs/recipes.md, "Memory of the paper presets"). Passing a block's parameters through a
  barrier with `x`, the activations of the layer before it, makes its gather wait for that
  layer: at most two layers' weights are gathered at a time, one computing and one
  prefetched. Values and gradients are unchanged (the barrier is the identity).
  """
  if _ACTIVATION_BATCH.get() is None:
    return tree, x
  return jax.lax.optimization_barrier((tree, x))


def _param_state(model_or_state) -> nnx.State:
  if isinstance(model_or_state, nnx.Module):
    return nnx.state(model_or_state, nnx.Param)
  return model_or_state


def _axes_of(variable) -> tuple[str | None, ...]:
  axes = variable.get_metadata().get('logical_axes')
  if axes is None:
    raise ValueError(
        f'Parameter {type(variable).__name__} with shape '
        f'{variable.shape} has no `logical_axes` metadata.')
  if len(axes) != len(variable.shape):
    raise ValueError(
        f'logical_axes={axes} do not match parameter shape {variable.shape}.')
  return tuple(axes)


def logical_axes(model_or_state) -> dict[str, Any]:
  """Logical axis names of every parameter.

  Args:
    model_or_state: an `nnx.Module`, or `nnx.state(model, nnx.Param)`
      (concrete or abstract, e.g. from `nnx.eval_shape`).

  Returns:
    Nested dict shaped like `nnx.to_pure_dict(nnx.state(model, nnx.Param))`
    with a tuple of logical names per leaf. Note: tuples are pytree nodes,
    so map over it with `is_leaf=lambda x: isinstance(x, tuple)`.
  """
  return nnx.to_pure_dict(_param_state(model_or_state), extract_fn=_axes_of)


def _mesh_axes(rule_value) -> tuple[str, ...]:
  if rule_value is None:
    return ()
  if isinstance(rule_value, str):
    return (rule_value,)
  return tuple(rule_value)


def spec_for(
    axes: Sequence[str | None],
    shape: Sequence[int],
    mesh: Mesh,
    rules: Rules = DEFAULT_RULES,
) -> PartitionSpec:
  """PartitionSpec for one array with the given logical axes and shape."""
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    chosen = None
    for rule_name, rule_value in rules:
      if rule_name != name:
        continue
      mesh_axes = _mesh_axes(rule_value)
      if not mesh_axes:
        break  # explicit "replicate"
      size = 1
      for a in mesh_axes:
        size *= mesh.shape.get(a, 0)
      if (size > 0 and dim % size == 0
          and not any(a in used for a in mesh_axes)):
        chosen = mesh_axes
        break
    if chosen:
      used.update(chosen)
      spec.append(chosen[0] if len(chosen) == 1 else chosen)
    else:
      spec.append(None)
  return PartitionSpec(*spec)


def param_partition_specs(
    model_or_state, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> dict[str, Any]:
  """PartitionSpecs for every parameter.

  Args:
    model_or_state: an `nnx.Module`, or `nnx.state(model, nnx.Param)`
      (concrete or abstract).
    mesh: the device mesh; rules naming axes it lacks are skipped.
    rules: ordered (logical name -> mesh axis | tuple | None) rules.

  Returns:
    Nested dict shaped like `nnx.to_pure_dict(nnx.state(model, nnx.Param))`
    with a `PartitionSpec` per leaf. A mesh axis that does not divide a
    dimension is dropped for it (replicated), and a mesh axis is used at
    most once per spec.
  """
  return nnx.to_pure_dict(
      _param_state(model_or_state),
      extract_fn=lambda v: spec_for(_axes_of(v), v.shape, mesh, rules),
  )


def param_shardings(
    model_or_state, mesh: Mesh, rules: Rules = DEFAULT_RULES
) -> dict[str, Any]:
  """Like `param_partition_specs`, with `NamedSharding` leaves."""
  specs = param_partition_specs(model_or_state, mesh, rules)
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, PartitionSpec))


def shard_model(model: nnx.Module, mesh: Mesh,
                rules: Rules = DEFAULT_RULES) -> nnx.Module:
  """Moves the model's parameters onto `mesh` in place; returns the model."""
  state = nnx.state(model, nnx.Param)
  pure = jax.device_put(nnx.to_pure_dict(state),
                        param_shardings(state, mesh, rules))
  nnx.replace_by_pure_dict(state, pure)
  nnx.update(model, state)
  return model
