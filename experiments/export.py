r"""Exports a run's newest policy as a Hugging Face checkpoint directory.

    python -m experiments.export --workdir=/tmp/run --out=/tmp/run_hf

Writes safetensors, `config.json`, `generation_config.json`, and the tokenizer files the run
trained with (`tokenizer.json`, `tokenizer_config.json` with its chat template,
`chat_template.jinja`, ...), so `transformers.AutoModelForCausalLM.from_pretrained(out)` and
`AutoTokenizer.from_pretrained(out)` load the trained model (`training/export.py`). A run
that cannot be exported is refused with one line, exit 2.
"""

import json

from absl import app, flags

from experiments import common

_WORKDIR = flags.DEFINE_string("workdir", None, "The run's workdir.")
_OUT = flags.DEFINE_string("out", None, "The Hugging Face checkpoint directory to write.")
_DTYPE = flags.DEFINE_enum("dtype", None, ["float32", "bfloat16", "float16"],
                           "Dtype of the saved tensors (default: the model's param dtype).")
flags.mark_flags_as_required(["workdir", "out"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  common.quiet_libraries()
  from training import export

  try:
    result = export.export_run(_WORKDIR.value, _OUT.value, dtype=_DTYPE.value)
  except (export.ExportError, *common.refusals()) as e:
    common.fail(e)
  print(json.dumps({"out": _OUT.value, **result}))


if __name__ == "__main__":
  app.run(main)
