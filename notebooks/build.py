r"""Writes the Colab notebooks of notebooks/ from the cells below (outputs empty).

    python -m notebooks.build          # or: python notebooks/build.py

The notebooks are generated: edit the cells here, run this script, and commit both. Each
notebook is a list of markdown (`md`) and code (`code`) cells; the code cells are plain
Python (IPython's `!` lines where a shell command is meant). tests/test_notebooks.py checks
that the committed .ipynb files equal what this script writes, and (under
`-m notebooks`) executes every notebook headless.

Every notebook starts with the same setup cell: it installs the package when it is not
importable (Colab), and reads `PREFOPT_NOTEBOOK_SMOKE=1`, which shrinks each run further
for CI.
"""

from __future__ import annotations

import os
import sys

import nbformat

HERE = os.path.dirname(os.path.abspath(__file__))

# Where Colab clones the code from when the package is not installed. The project has no
# public address yet: set PREFOPT_REPO_URL in the Colab session (or upload the repository
# and `pip install -e` it) until this points at one.
REPO_URL = ""


def md(text: str) -> tuple[str, str]:
  return ("markdown", text.strip("\n"))


def code(text: str) -> tuple[str, str]:
  return ("code", text.strip("\n"))


SETUP = code(f'''
# Setup: install the package unless it is importable already (this checkout, or `pip install -e`).
import importlib.util
import os
import sys

root = os.path.abspath("..") if os.path.exists("../setup.py") else os.path.abspath(".")
if os.path.exists(os.path.join(root, "setup.py")) and root not in sys.path:
  sys.path.insert(0, root)  # a checkout: its packages import without installing
if importlib.util.find_spec("training.loop") is None:  # Colab: clone and install
  url = os.environ.get("PREFOPT_REPO_URL", {REPO_URL!r})
  if not url:
    raise RuntimeError("set PREFOPT_REPO_URL to the repository's git address")
  !git clone -q {{url}} /content/jax-prefopt
  !pip install -q -e /content/jax-prefopt
  sys.path.insert(0, "/content/jax-prefopt")

SMOKE = os.environ.get("PREFOPT_NOTEBOOK_SMOKE") == "1"  # CI: shrink every run further
import jax
print("jax", jax.__version__, "on", jax.devices()[0].platform, "| smoke mode:", SMOKE)
''')

WORKDIR = '''
import tempfile
from IPython.display import Image, display

WORKDIR = tempfile.mkdtemp(prefix="{name}-")  # a fresh run each time the notebook runs
print(WORKDIR)
'''


# ---------------------------------------------------------------------------------------
# quickstart.ipynb

QUICKSTART = [
    md('''
# Quickstart: DPO on a tiny model, its curves, a Hugging Face checkpoint in and out

This notebook trains sigmoid DPO (`configs/dpo.py:tiny`: a 4-layer byte-level Llama on the
built-in digit-sorting preferences) in this Python process, plots its training curves,
loads a Hugging Face checkpoint with `models.from_hf`, and exports the trained run as a
Hugging Face checkpoint with `training.export.export_run`. It runs on a CPU in a few
minutes; no network is needed after the install.
'''),
    SETUP,
    code(WORKDIR.format(name="quickstart")),
    md('''
## 1. The config

`configs/dpo.py:tiny` with a few fields overridden: fewer steps than the preset's 120 (the
held-out reward accuracy is already near 1 by then), an evaluation every 20 steps. Any field
of `configs/base.py` can be changed the same way; `training.loop.train` checks the values
before anything is built.
'''),
    code('''
from configs import dpo

config = dpo.get_config("tiny")
config.update(total_steps=24 if SMOKE else 60, eval_every=12 if SMOKE else 20, log_every=4,
              checkpoint_every=60, progress_bar=False)
config.data.update(synthetic_train_size=1024 if SMOKE else 2048, synthetic_test_size=64)
config.optimizer.warmup_steps = 4
print(f"loss {config.loss.name}, beta {config.loss.beta}, {config.model.num_layers} layers, "
      f"{config.total_steps} steps")
'''),
    md('''
## 2. Train

`training.loop.train(config, workdir)` is what `python -m experiments.train` runs: it
prepares the data (a TFDS cache under `WORKDIR/tfds`), builds the model and the frozen
reference, trains, evaluates on the held-out split and writes `metrics.jsonl`, TensorBoard
events, checkpoints and `curves.png` to the workdir. At step 0 the policy equals the
reference, so the reward accuracy reads 0.5.
'''),
    code('''
from training import loop

summary = loop.train(config, WORKDIR)
for when in ("first_eval", "final_eval"):
  acc, margin = (summary[when][f"eval/rewards/{k}"] for k in ("accuracies", "margins"))
  print(f"{when}: reward accuracy {acc:.3f}, margin {margin:.3f}")
'''),
    md('''
## 3. The curves

`training.metrics.read_metrics` reads `metrics.jsonl` (one record per logged step, eval
metrics prefixed `eval/`, TRL's names); `plot_curves` draws the loss, the reward accuracy
and margin of the training batches and the held-out split.
'''),
    code('''
from training.metrics import plot_curves, read_metrics

records = read_metrics(WORKDIR)
print(len(records), "records; the last:", {k: round(v, 3) for k, v in records[-1].items()
                                         if k.startswith("eval/rewards")})
display(Image(plot_curves(WORKDIR)))
'''),
    md('''
## 4. Load a Hugging Face checkpoint

A random-weight Llama checkpoint built here (no download): with `transformers` when it is
installed (`LlamaConfig` + `save_pretrained`), otherwise with our own `models.to_hf`.
`models.from_hf` reads any supported family's `config.json` and safetensors without torch;
with transformers present the two models' logits are compared.
'''),
    code('''
import numpy as np
from flax import nnx

import models

HF_DIR = os.path.join(WORKDIR, "hf_llama")
shape = dict(vocab_size=512, hidden_size=64, intermediate_size=128, num_heads=4,
             num_kv_heads=2, max_position_embeddings=128)
try:
  import torch
  import transformers
except ImportError:
  transformers = None
if transformers is not None:
  transformers.logging.set_verbosity_error()
  transformers.logging.disable_progress_bar()
  hf_config = transformers.LlamaConfig(
      vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
  torch.manual_seed(0)
  transformers.LlamaForCausalLM(hf_config).save_pretrained(HF_DIR)
else:
  models.to_hf(models.Transformer(models.ModelConfig(num_layers=2, **shape),
                                  rngs=nnx.Rngs(0)), HF_DIR)
print(sorted(os.listdir(HF_DIR)))
'''),
    code('''
model = models.from_hf(HF_DIR)
ids = np.array([[1, 17, 42, 99, 7, 300]])
logits = np.asarray(model(ids))
print(model.config.num_layers, "layers; logits", logits.shape)
if transformers is not None:
  with torch.no_grad():
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(HF_DIR)
    theirs = hf_model(torch.tensor(ids)).logits.numpy()
  print("max |ours - transformers'| =", float(np.abs(logits - theirs).max()))
'''),
    md('''
To train from such a checkpoint, point the config at it (and at its tokenizer directory for
a real model): `config.model.init_from = HF_DIR` (`--config.model.init_from=...` on the
command line); the model's shape then comes from its `config.json`.

## 5. Export the trained run

`training.export.export_run(workdir, out)` (or `python -m experiments.export`) writes the
run's newest policy as a Hugging Face checkpoint: `config.json`, `model.safetensors`
(`generation_config.json` too when the tokenizer's special ids are known), and the tokenizer
files the run trained with (none here: the tiny preset's tokenizer is the built-in
byte-level one, which the warning below says). The exported model gives the trained
model's logits.
'''),
    code('''
from training.export import export_run
from training.experiment import load_trained

OUT = os.path.join(WORKDIR, "exported")
print(export_run(WORKDIR, OUT))
print(sorted(os.listdir(OUT)))

_, graphdef, params = load_trained(WORKDIR)  # the run's newest checkpoint
trained = np.asarray(nnx.merge(graphdef, jax.device_get(params))(ids))
exported = np.asarray(models.from_hf(OUT)(ids))
print("max |trained - exported| =", float(np.abs(trained - exported).max()))
if transformers is not None:
  with torch.no_grad():
    theirs = transformers.AutoModelForCausalLM.from_pretrained(OUT)(torch.tensor(ids)).logits
  print("max |trained - transformers(export)| =", float(np.abs(trained - theirs.numpy()).max()))
'''),
]


# ---------------------------------------------------------------------------------------
# algorithms.ipynb

ALGORITHMS = [
    md('''
# The small worlds: every algorithm against an exact optimum

Each registered algorithm's real loss (from the registry, unchanged) trains a tabular policy
on the exact expected loss of a small contextual bandit, and the result is compared with a
target computed independently: DPO's KL-regularised optimum π_ref·e^(r/β)/Z, the Nash
equilibrium of a cyclic preference game (DNO, INPO, GPO), a GPM against a Bradley-Terry
model on intransitive tournaments, and more. These are the first rung of the verification
ladder; `verification/` holds the worlds and the reasons each target is right, and
`python -m experiments.verification_report` writes the same figures to `docs/`.
'''),
    SETUP,
    code(WORKDIR.format(name="worlds")),
    md('''
`verification.worlds.run(name)` runs one algorithm's worlds and returns `WorldResult`s
(value, target, tolerance, criterion, plot data); `experiments.verification_report.plot_algorithm`
draws one figure per algorithm. The helper below runs, prints and plots one algorithm.
'''),
    code('''
from verification import offline_worlds, worlds
from verification.common import timed
from experiments.verification_report import plot_algorithm

RESULTS = {}


def show(name, world_fn=None):
  """Runs `name`'s worlds (or the generator `world_fn`), prints a line each, plots them."""
  results = RESULTS[name] = timed(world_fn) if world_fn else worlds.run(name)
  for r in results:
    verdict = "pass" if r.passed else ("miss (documented)" if r.expected_shortfall else "FAIL")
    print(f"{verdict:5s} {r.world}: {r.metric} = {r.value:.4g} "
          f"(target {r.target:.4g}, {r.criterion} {r.tolerance:.3g}) [{r.runtime_s:.1f} s]")
  path = os.path.join(WORKDIR, f"{name}.png")
  plot_algorithm(results, path)
  if os.path.exists(path):
    display(Image(path))


print("algorithms with worlds:", ", ".join(worlds.names()))
'''),
    md('''
## DPO: the KL-regularised optimum

With Bradley-Terry labels from a reward r, DPO's optimum is π* = π_ref·e^(r/β)/Z. The
learned policy (bars) should match it within 0.02 in total variation.
'''),
    code('show("dpo")'),
    md('''
## IPO, and LD-DPO's length worlds

IPO (on summed log-probs) has a least-squares optimum. LD-DPO with equal lengths reduces to
DPO's KL optimum; with length-biased labels its drift in length should be a third of DPO's
or less. Those length worlds are measured, documented misses (`docs/ld_dpo_length.md` says
why); the panels show both drifts. In smoke mode (CI) only the tabular LD-DPO worlds run
(the shared-parameter ones take a minute or two).
'''),
    code('show("ipo")'),
    code('show("ld_dpo", offline_worlds.ld_dpo_worlds if SMOKE else None)'),
    md('''
## DNO and INPO: converging to the Nash equilibrium

On a transitive preference the equilibrium is the best response; on a cyclic one
(rock-paper-scissors-like) it is mixed, and the duality gap measures the distance to it.
On the cyclic game DNO's last iterate keeps cycling while its average iterate converges;
INPO's regularised game converges in its last iterate.
'''),
    code('show("dno")'),
    code('show("inpo")'),
    md('''
## GPO / SPPO: the GPM score game

GPO's squared regression onto the general preference model's scores: its average iterate
should reach the game's equilibrium (scaled gap ≤ 0.02).
'''),
    code('show("gpo")'),
    md('''
## GPM against Bradley-Terry on cyclic tournaments

A general preference model (2k-dimensional embeddings) can represent intransitive
preferences and reaches ~100% pairwise accuracy on a cyclic tournament; a Bradley-Terry
scalar reward cannot do better than chance there (0.5 ± 0.1).
'''),
    code('show("gpm")'),
    code('show("bt_reward")'),
    md('''
## T-REG, the implicit PRM and PRIME

T-REG with zero token rewards keeps DPO's optimum, and its token-level credit should move
the deciding token more than DPO does. The implicit PRM (CE and DPO objectives) should rank
correct steps above wrong ones (AUC ≥ 0.9); PRIME's online loop should raise the expected
outcome.
'''),
    code('show("t_reg")'),
    code('show("implicit_prm")'),
    code('show("prime")'),
    md('## Summary'),
    code('''
every = [r for results in RESULTS.values() for r in results]
print(f"{sum(r.passed for r in every)} of {len(every)} worlds meet their criterion")
for r in every:
  if not r.passed:
    print(f"  {r.algorithm}/{r.world}:", "documented miss" if r.expected_shortfall else "FAIL")
'''),
]


# ---------------------------------------------------------------------------------------
# online.ipynb

ONLINE = [
    md('''
# Online rounds: three rounds of DNO with the win-rate plot

DNO-Prct (Rosset et al. 2024) from `configs/dno.py:tiny`: an SFT warm-up makes π_0, then
each round samples K responses per prompt from π_t, scores every pair with the oracle (the
built-in task's sorting verifier), trains on the best-vs-worst pairs against π_t, and
evaluates the new policy against π_0 on held-out prompts: the win rate, the
length-controlled win rate, the mean length and the verifier's accuracy. `docs/online.md`
explains every stage and choice.
'''),
    SETUP,
    code(WORKDIR.format(name="online")),
    md('''
## The config

The tiny preset shrunk to run in a few minutes on a CPU: 256 prompts × 4 samples and 32
training steps a round, 128 held-out prompts (the preset itself: 512 prompts, 64 steps, 256
held-out prompts). On the project's 2-core CPU this notebook took under 3 minutes and the
win rate against π_0 read 0.62, 0.66, 0.62 after rounds 1-3 (the verifier's accuracy
0.40 → 0.55). In smoke mode (CI) the model is shrunk too, as the tests' `micro_online`
does; its win rates are noise.
'''),
    code('''
from configs import dno

config = dno.get_config("tiny")
config.online.rounds = 3
config.progress_bar = False
if SMOKE:
  config.model.update(hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                      num_kv_heads=2)
  config.data.update(synthetic_train_size=256, synthetic_test_size=24)
  config.update(total_steps=4, batch_size=8, eval_batch_size=8, checkpoint_every=4)
  config.optimizer.update(learning_rate=1e-4, warmup_steps=1)
  config.online.update(num_prompts=32, sft_steps=100, eval_prompts=8, max_new_tokens=12)
else:
  config.total_steps = 32
  config.online.update(num_prompts=256, eval_prompts=128)
print({k: config.online[k] for k in ("rounds", "num_prompts", "num_samples", "sft_steps",
                                     "eval_prompts")}, "| steps a round:", config.total_steps)
'''),
    md('''
## Run the rounds

`training.rounds.iterate(config, workdir)` is what `python -m experiments.iterate` runs.
Every stage is a file under `WORKDIR/round_<t>/`, so running this cell again on the same
workdir resumes instead of starting over.
'''),
    code('''
from training import rounds

summary = rounds.iterate(config, WORKDIR)
for row in summary["rounds"]:
  print({k: round(v, 3) for k, v in row.items()})
'''),
    md('''
## The win-rate plot

`training.win_rates.plot_rounds` (also written as `WORKDIR/rounds.png` after each round):
win rate and length-controlled win rate against π_0 and the verifier's accuracy on the left
axis (0.5 dashed: no better than π_0), the mean response length on the right.
'''),
    code('''
from training.win_rates import plot_rounds

display(Image(plot_rounds(summary["rounds"], os.path.join(WORKDIR, "win_rates.png"))))
'''),
    md('''
## What a round keeps

The samples, the oracle's judgement, the training rows (with the frozen models' log-probs)
and the round's checkpoints and training metrics:
'''),
    code('''
for t in range(config.online.rounds + 1):
  print(f"round_{t}:", sorted(os.listdir(os.path.join(WORKDIR, f"round_{t}"))))
'''),
]


# ---------------------------------------------------------------------------------------
# tpu.ipynb

TPU = [
    md('''
# The 1B recipe on a TPU (or the tiny one on a CPU)

In a Colab TPU runtime (Runtime → Change runtime type → TPU) this notebook builds the
device mesh from `jax.devices()` and runs the first steps of `configs/dpo.py:1b` (the 1B
Llama shape, bf16 compute with fp32 master weights) with its parameters and optimizer state
sharded over every chip (`mesh.fsdp` = the number of chips). The weights are random and the
data is the built-in sorting task: this checks that the recipe compiles, fits and steps on
the slice; for a real run set `config.model.init_from`, `config.data.tokenizer` and
`config.data.path` (`WORKSPACE-notes.md`). Without an accelerator it runs the tiny preset
instead and says so.
'''),
    SETUP,
    code(WORKDIR.format(name="tpu")),
    md('''
## The runtime

`jax.devices()[0].platform` is `tpu` in a TPU runtime (`gpu` on a GPU, `cpu` otherwise).
'''),
    code('''
devices = jax.devices()
platform = devices[0].platform
ACCELERATOR = platform in ("tpu", "gpu")
print(len(devices), platform, "device(s):", devices[0].device_kind)
if ACCELERATOR:
  print(f"running the 1b recipe's first steps on {len(devices)} {platform} device(s)")
else:
  print("no TPU (or GPU) runtime here: running the tiny preset on the CPU instead")
'''),
    md('''
## The config and the mesh

The mesh is `data × fsdp × tensor` (`training/mesh.py`); here every chip goes to `fsdp`:
parameters and AdamW moments are sharded over the chips and the batch is split over them.
The batch must be a multiple of the chips, which the config check enforces before compiling.
The run is shortened to a few steps; sequences are capped at the sorting task's length
(its prompts and answers are short) and the reference log-probs are precomputed once, so
no frozen copy of the 1B weights sits beside the policy.
'''),
    code('''
from configs import dpo
from training import mesh as mesh_lib

n = len(devices)
if ACCELERATOR:
  config = dpo.get_config("1b")
  config.update(total_steps=4 if SMOKE else 10, batch_size=max(8, n), eval_batch_size=max(8, n),
                log_every=1, eval_every=0, checkpoint_every=1000, progress_bar=False)
  config.data.update(max_prompt_len=64, max_completion_len=64, buckets=(128,),
                     synthetic_train_size=512, synthetic_test_size=64)
  config.optimizer.warmup_steps = 2
  config.reference.mode = "precomputed"
else:
  config = dpo.get_config("tiny")
  config.update(total_steps=10 if SMOKE else 40, eval_every=10 if SMOKE else 20, log_every=5,
                checkpoint_every=1000, progress_bar=False)
  config.data.update(synthetic_train_size=512, synthetic_test_size=64)
  config.optimizer.warmup_steps = 2
config.mesh.update(data=1, fsdp=n, tensor=1)
mesh = mesh_lib.make_mesh(config.mesh, devices)
print("mesh:", dict(mesh.shape))

'''),
    md('''
## Does it fit?

Training holds about 16 bytes per parameter (fp32 weights, gradients and two AdamW
moments), split over the chips by `fsdp`, plus the activations. A runtime whose chips are
too small for the whole 1B model together (a single 16 GiB chip, say) keeps the recipe's
width and drops layers until it fits, and says so.
'''),
    code('''
import models
from training.experiment import model_config


def train_gib(config):
  """GiB of weights, gradients and AdamW moments per device (fp32, sharded over n)."""
  return models.num_params(model_config(config)) * 16 / n / 2**30


limit = (devices[0].memory_stats() or {}).get("bytes_limit") if ACCELERATOR else None
if limit:
  while train_gib(config) > 0.7 * limit / 2**30 and config.model.num_layers > 1:
    config.model.num_layers -= 1
  if config.model.num_layers < dpo.get_config("1b").model.num_layers:
    print(f"{limit / 2**30:.0f} GiB per chip is too small for all 16 layers: "
          f"{config.model.num_layers} layers of the 1b shape instead")
print(f"model: {models.num_params(model_config(config)) / 1e6:.0f}M parameters, "
      f"{config.model.num_layers} layers, hidden {config.model.hidden_size}, compute "
      f"{config.model.dtype}, params {config.model.param_dtype}; "
      f"~{train_gib(config):.2f} GiB of training state per device")
'''),
    md('''
## The first steps

The first step includes the compilation (a minute or more for the 1B model); the per-step
throughput in `metrics.jsonl` (`perf/*`) excludes it.
'''),
    code('''
import time

from training import loop
from training.metrics import read_metrics

start = time.perf_counter()
summary = loop.train(config, WORKDIR)
print(f"{summary['final_step']} steps in {time.perf_counter() - start:.0f} s (compilation included)")
for r in read_metrics(WORKDIR):
  if "loss" in r:
    perf = {k: round(v, 1) for k, v in r.items() if k.startswith("perf/") and "tokens" in k}
    print(f"step {r['step']}: loss {r['loss']:.4f}", perf)
'''),
    code('''
if ACCELERATOR:
  stats = devices[0].memory_stats() or {}
  if stats:
    print(f"peak memory on device 0: {stats.get('peak_bytes_in_use', 0) / 2**30:.2f} GiB "
          f"of {stats.get('bytes_limit', 0) / 2**30:.2f} GiB")
'''),
]


NOTEBOOKS = {
    "quickstart.ipynb": (QUICKSTART, None),
    "algorithms.ipynb": (ALGORITHMS, None),
    "online.ipynb": (ONLINE, None),
    "tpu.ipynb": (TPU, "TPU"),
}


def notebook(name: str) -> nbformat.NotebookNode:
  """The notebook `name` (a key of NOTEBOOKS), outputs empty, cell ids stable."""
  cells, accelerator = NOTEBOOKS[name]
  nb = nbformat.v4.new_notebook()
  stem = name.removesuffix(".ipynb")
  for i, (kind, source) in enumerate(cells):
    make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
    nb.cells.append(make(source, id=f"{stem}-{i:02d}"))
  nb.metadata = {
      "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
      "language_info": {"name": "python"},
      "colab": {"provenance": [], "name": name},
  }
  if accelerator:
    nb.metadata["accelerator"] = accelerator
  nbformat.validate(nb)
  return nb


def text(name: str) -> str:
  """The file contents of notebook `name`."""
  return nbformat.writes(notebook(name)) + "\n"


def main(directory: str = HERE) -> list[str]:
  paths = []
  for name in NOTEBOOKS:
    path = os.path.join(directory, name)
    with open(path, "w", encoding="utf-8") as f:
      f.write(text(name))
    paths.append(path)
  return paths


if __name__ == "__main__":
  sys.path.insert(0, os.path.dirname(HERE))
  for p in main(sys.argv[1] if len(sys.argv) > 1 else HERE):
    print("wrote", p)
