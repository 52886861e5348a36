"""Runs a few train steps of the micro config on a given mesh and saves the result.

    python tests/mesh_worker.py OUT.npz DATA FSDP TENSOR [GRAD_ACCUM [TFDS_DIR [SHARE_PROMPT
        [SHARD_ACTIVATIONS]]]]

Used by test_training.py in subprocesses, because the number of (virtual) CPU devices is
fixed when JAX starts.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from tests.conftest import micro_config  # noqa: E402
from training import experiment
from training.mesh import put_batch  # noqa: E402


def main(out, data, fsdp, tensor, accum="1", tfds_dir="", share_prompt="0",
         shard_activations="0"):
  config = micro_config(**{"mesh.data": int(data), "mesh.fsdp": int(fsdp),
                           "mesh.tensor": int(tensor), "grad_accum_steps": int(accum),
                           "data.data_dir": tfds_dir, "model.share_prompt": share_prompt == "1",
                           "mesh.shard_activations": shard_activations == "1"})
  exp = experiment.build(config, os.path.dirname(out))
  step = jax.jit(experiment.make_train_step_for(exp), donate_argnums=(0,))
  state, losses = exp.state, []
  for s in range(3):
    state, metrics = step(state, exp.ref_params, put_batch(exp.train_batches.batch(s), exp.mesh))
    losses.append(float(metrics["loss"]))
  flat = jax.tree_util.tree_flatten_with_path(jax.device_get(state.params))[0]
  np.savez(out, losses=np.array(losses), devices=len(jax.devices()),
           **{jax.tree_util.keystr(k): np.asarray(v) for k, v in flat})


if __name__ == "__main__":
  main(*sys.argv[1:])
