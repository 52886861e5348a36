"""The device mesh and how batches and parameters are laid out on it.

Mesh axes: `data` (pure data parallelism), `fsdp` (data parallelism with parameters sharded),
`tensor` (tensor parallelism). The batch is split over `data` and `fsdp` together; parameters
follow the logical-axis rules in `models.partitioning`.
"""

from __future__ import annotations

import jax
from jax.experimental import mesh_utils
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(mesh_cfg, num_devices: int) -> tuple[int, int, int]:
  """(data, fsdp, tensor) sizes; `data = -1` takes the devices the other axes leave."""
  fsdp, tensor = int(mesh_cfg.fsdp), int(mesh_cfg.tensor)
  if fsdp < 1 or tensor < 1:
    raise ValueError(f"config.mesh.fsdp and config.mesh.tensor must be >= 1, got {fsdp}, {tensor}")
  data = int(mesh_cfg.data)
  if data == -1:
    if num_devices % (fsdp * tensor):
      raise ValueError(f"{num_devices} devices cannot be split into fsdp={fsdp} x tensor={tensor}")
    data = num_devices // (fsdp * tensor)
  if data < 1 or data * fsdp * tensor != num_devices:
    raise ValueError(
        f"config.mesh data={mesh_cfg.data} x fsdp={fsdp} x tensor={tensor} does not match the "
        f"{num_devices} available devices")
  return data, fsdp, tensor


def make_mesh(mesh_cfg, devices=None) -> Mesh:
  devices = jax.devices() if devices is None else devices
  shape = mesh_shape(mesh_cfg, len(devices))
  try:
    device_array = mesh_utils.create_device_mesh(shape, devices=devices)
  except Exception:  # e.g. odd CPU device counts: fall back to the given order
    device_array = np.asarray(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (pair) axis over data x fsdp; the sequence axis replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_divisor(mesh: Mesh) -> int:
  return mesh.shape["data"] * mesh.shape["fsdp"]


def put_batch(batch: dict, mesh: Mesh) -> dict:
  """Host-local numpy batch -> global jax arrays sharded over the batch axes.

  Each process passes its own slice of the global batch (multi-host safe).
  """
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in batch.items()}


def put_global(x, sharding) -> jax.Array:
  """A numpy array that every process holds whole (the same values on each) -> one global
  array laid out by `sharding`: each process places the slices of its own devices, with no
  communication. Unlike `put_batch`, whose processes each pass their own slice."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def put_whole_batch(batch: dict, mesh: Mesh) -> dict:
  """`put_global` of every array of a batch that each process holds whole: global arrays
  sharded over the batch axes (the leading axis a multiple of data x fsdp)."""
  sharding = batch_sharding(mesh)
  return {k: put_global(v, sharding) for k, v in batch.items()}
