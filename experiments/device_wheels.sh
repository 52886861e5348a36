#!/usr/bin/env bash
# Prepares what one device call carries: the wheels of the packages this project needs that
# the lent GPU machines' image lacks (it has jax, flax, optax, orbax, chex, absl, tokenizers,
# torch, transformers and accelerate, and no network), and the TRL anchor script.
#
#   experiments/device_wheels.sh            # here, with network: fills .whl/ and .bench/
#
# Then one device call (`carry`: .whl and .bench) runs:
#
#   python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl \
#     && export PYTHONPATH=/tmp/site && python3 -m experiments.device_check; \
#     cp docs/benchmarks/device_check_*.json "$OUT"/   # only $OUT comes back
#
# The set is what `pip show` of the image (the device tool's KINDS.md) lacks of our
# install_requires and of the anchor's (trl, datasets) with their requirements: Python 3.12,
# x86-64, 12 MB. Checked by installing it into a bare Python 3.12 environment holding only
# the image's packages that we use, and running the dry run there (WORKSPACE-notes.md, "One
# GPU"). Both folders are git-ignored.
set -euo pipefail
cd "$(dirname "$0")/.."
out=.whl
mkdir -p "$out" .bench

# Ours: ml-collections, tensorflow-datasets (array_record data sources, no TensorFlow),
# tensorboardX, and tensorflow-datasets' own requirements the image lacks.
ours=(ml-collections==1.1.0 tensorflow-datasets==4.9.10 array-record==0.8.6 tensorboardX==2.6.5
      dm-tree==0.1.10 immutabledict==4.3.1 simple-parsing==0.1.9 docstring-parser==0.18.0
      tensorflow-metadata==1.21.0 googleapis-common-protos==1.76.0 termcolor==3.3.0
      toml==0.10.2)
# The TRL anchor (../shared/bench/trl_dpo_bench.py): the TRL release it was measured with.
anchor=(trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19)

platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 \
         manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp "${platforms[@]}" -d "$out" "${ours[@]}" "${anchor[@]}"
# promise (a tensorflow-datasets requirement) is published as a source archive only; it is
# pure Python, so a wheel built here installs there.
python3 -m pip wheel -q --no-deps -w "$out" promise==2.3

# device_check.py looks for the anchor in .bench/ among other places; only .bench/ travels.
for dir in ../shared/bench shared/bench; do
  if [[ -f "$dir/trl_dpo_bench.py" ]]; then
    cp "$dir/trl_dpo_bench.py" .bench/
    break
  fi
done
[[ -f .bench/trl_dpo_bench.py ]] || echo "no trl_dpo_bench.py found: the call will skip TRL" >&2
ls "$out" .bench
du -sh "$out"
