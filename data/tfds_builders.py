"""TFDS builders for preference data, stored as array_record (no TensorFlow).

``tfds.core.GeneratorBasedBuilder`` with ``file_format='array_record'``
prepares and reads back without TensorFlow: generation, shuffling and
writing are pure Python + array_record, and reading goes through
``builder.as_data_source()`` (random access, no ``tf.data``). Never call
``builder.as_dataset()`` / ``tfds.load()`` here: those need TensorFlow.

* ``SyntheticPreferences``: the digit-sorting task (``data.synthetic``),
  splits train/test; sizes and seed come from constructor kwargs (or a
  ``SyntheticConfig``) and name the config, so each setting has its own cache.
* ``LocalPreferences``: local TRL-layout files (``data.readers``). The config
  name carries a hash of the files' bytes (and the reader version), so
  editing a file yields a new config: a stale cache is never read.

Examples are written in generation order (``disable_shuffling``), so index
``i`` of a split holds ``example_id == i``.

The builders are not added to TFDS's global registry (``skip_registration``):
that would be an import side effect and a re-import error; build them
directly or use ``load_preference_source``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import re
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from data import readers, synthetic
from data.errors import DataError, locate

_FILE_FORMAT = "array_record"
_TEXT_FIELDS = ("prompt", "chosen", "rejected")


def _features() -> tfds.features.FeaturesDict:
  """Texts, the example id and every PAIR_FIELD as float64, NaN where a record has none."""
  return tfds.features.FeaturesDict({
      "prompt": tfds.features.Text(),
      "chosen": tfds.features.Text(),
      "rejected": tfds.features.Text(),
      "example_id": np.int64,
      **{field: np.float64 for field in readers.PAIR_FIELDS},
  })


class _ThisModulePath:
  """Class-level ``code_path``: this file.

  TFDS derives ``code_path`` (only used to look for a checksums file next to
  the builder) through ``importlib_resources``, a dependency some installs
  lack (it fails here); pointing at this module sidesteps that lookup.
  """

  def __get__(self, obj, objtype=None):
    return epath.Path(__file__)


class _PreferenceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing of the builders below (abstract)."""

  code_path = _ThisModulePath()


_PAIR_FIELDS_NOTE = "PAIR_FIELDS (labels, preference_prob, scores) as float64, NaN = none."


def _examples(records: list[dict]) -> Iterator[tuple[int, dict]]:
  # The readers accept only finite numbers, so NaN unambiguously means "not given".
  for i, r in enumerate(records):
    yield i, {"prompt": r["prompt"], "chosen": r["chosen"],
              "rejected": r["rejected"], "example_id": i,
              **{f: r.get(f, math.nan) for f in readers.PAIR_FIELDS}}


# --------------------------------------------------------------------------
# Synthetic


@dataclasses.dataclass(eq=False, kw_only=True)
class SyntheticConfig(tfds.core.BuilderConfig):
  num_train: int = 5000
  num_test: int = 500
  seed: int = 0
  min_digits: int = 3
  max_digits: int = 6


def synthetic_config(num_train: int = 5000, num_test: int = 500, seed: int = 0,
                     min_digits: int = 3, max_digits: int = 6) -> SyntheticConfig:
  """A config whose name encodes every setting and the task version."""
  name = (f"{synthetic.TASK_VERSION.replace('-', '_')}_train{num_train}_test{num_test}"
          f"_seed{seed}_digits{min_digits}to{max_digits}")
  return SyntheticConfig(name=name, num_train=num_train, num_test=num_test, seed=seed,
                         min_digits=min_digits, max_digits=max_digits,
                         description="Digit sorting preference pairs.")


class SyntheticPreferences(_PreferenceBuilder, skip_registration=True):
  """The built-in digit-sorting preference task as a TFDS dataset."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": _PAIR_FIELDS_NOTE}

  def __init__(self, *, config: SyntheticConfig | None = None, num_train: int = 5000,
               num_test: int = 500, seed: int = 0, min_digits: int = 3,
               max_digits: int = 6, file_format: str = _FILE_FORMAT, **kwargs):
    if config is None:
      config = synthetic_config(num_train, num_test, seed, min_digits, max_digits)
    super().__init__(config=config, file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    # DatasetInfo directly: dataset_info_from_configs() wants metadata
    # files next to the module, which we do not ship.
    return tfds.core.DatasetInfo(
        builder=self, description=synthetic.__doc__.split("\n")[0],
        features=_features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    kw = dict(seed=cfg.seed, min_digits=cfg.min_digits, max_digits=cfg.max_digits)
    return {
        "train": self._generate_examples(synthetic.make_split("train", cfg.num_train, **kw)),
        "test": self._generate_examples(synthetic.make_split("test", cfg.num_test, **kw)),
    }

  def _generate_examples(self, records: list[dict]):
    return _examples(records)


# --------------------------------------------------------------------------
# Local files


@dataclasses.dataclass(eq=False, kw_only=True)
class LocalConfig(tfds.core.BuilderConfig):
  path: str = ""
  splits: tuple[str, ...] = ()
  # split -> files, resolved once when the config is made (and hashed).
  files: dict = dataclasses.field(default_factory=dict)


def _slug(path: str) -> str:
  base = os.path.basename(os.path.normpath(path)) or "data"
  return re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_")[:40] or "data"


def local_config(path: str, splits: Sequence[str] | None = None) -> LocalConfig:
  """A config for ``path`` named by a hash of the content of its split files.

  ``splits`` defaults to every split ``readers.available_splits`` finds.
  """
  path = os.path.abspath(path)
  splits = tuple(splits) if splits else tuple(readers.available_splits(path))
  if not splits:
    raise DataError(f"{path}: no preference files found")
  files = {s: tuple(readers.split_files(path, s)) for s in splits}
  h = hashlib.sha256(f"reader={readers.READER_VERSION}\n".encode())
  for split in splits:
    for file in files[split]:
      h.update(f"{split}\0{os.path.relpath(file, path)}\0".encode())
      with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      h.update(b"\0")
  name = f"{_slug(path)}_{h.hexdigest()[:16]}"
  return LocalConfig(name=name, path=path, splits=splits, files=files,
                     description=f"Preference pairs read from {path}.")


class LocalPreferences(_PreferenceBuilder, skip_registration=True):
  """Local JSONL / JSON / Parquet preference files as a TFDS dataset."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": _PAIR_FIELDS_NOTE}

  def __init__(self, *, config: LocalConfig | None = None, path: str | None = None,
               splits: Sequence[str] | None = None, file_format: str = _FILE_FORMAT,
               **kwargs):
    if config is None:
      if not path:
        raise ValueError("LocalPreferences needs path= (or config=)")
      config = local_config(path, splits)
    super().__init__(config=config, file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="Local preference pairs.",
        features=_features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    return {s: self._generate_examples(cfg.files[s]) for s in cfg.splits}

  def _generate_examples(self, files: Sequence[str]):
    return _examples(readers.read_files(files))


# --------------------------------------------------------------------------
# Loading


class PreferenceSource(Sequence[dict]):
  """Random access to a prepared split as dicts of python str / int.

  Wraps TFDS's ``ArrayRecordDataSource``, which yields Text features as
  UTF-8 bytes and ints as numpy scalars. ``name`` says where the split came
  from and ``files`` lists the local files it was read from (empty for the
  synthetic task), so errors found later can point back at a record.
  """

  def __init__(self, data_source, *, name: str = "preference source",
               files: Sequence[str] = ()):
    self._ds = data_source
    self.name = name
    self.files = tuple(files)

  def locate(self, index: int, field: str | None = None) -> str:
    """Where example ``index`` came from: its file and line / record when local."""
    if self.files:
      return readers.locate_record(self.files, index, field)
    return locate(self.name, record=index, field=field)

  @staticmethod
  def _convert(rec: dict) -> dict:
    out = {k: rec[k].decode("utf-8") if isinstance(rec[k], bytes) else str(rec[k])
           for k in _TEXT_FIELDS}
    out["example_id"] = int(rec["example_id"])
    for field in readers.PAIR_FIELDS:
      value = float(rec[field])
      if not math.isnan(value):
        out[field] = value
    return out

  def __len__(self) -> int:
    return len(self._ds)

  def __getitem__(self, i):  # type: ignore[override]
    if isinstance(i, slice):
      return [self[j] for j in range(*i.indices(len(self)))]
    i = int(i)
    if i < 0:
      i += len(self)
    if not 0 <= i < len(self):
      raise IndexError(f"index {i} out of range for {len(self)} examples")
    return self._convert(self._ds[i])

  def __iter__(self) -> Iterator[dict]:
    # Batched reads: far fewer array_record calls than one per example.
    n = len(self)
    for start in range(0, n, 1024):
      keys = list(range(start, min(start + 1024, n)))
      for rec in self._ds.__getitems__(keys):
        yield self._convert(rec)

  def __repr__(self) -> str:
    return f"PreferenceSource({self._ds!r})"


class _DropCustomConfigWarning(logging.Filter):
  # TFDS warns "Using custom data configuration" for every config not listed
  # in BUILDER_CONFIGS; ours are all made on the fly, so it is pure noise.
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("Using custom data configuration")


@contextlib.contextmanager
def _quiet():
  """Hides TFDS's tqdm bars and config warning, restoring the caller's setting."""
  from tensorflow_datasets.core.utils import tqdm_utils

  previous = getattr(tqdm_utils, "_active", True)
  tfds.display_progress_bar(False)
  absl_logger, log_filter = logging.getLogger("absl"), _DropCustomConfigWarning()
  absl_logger.addFilter(log_filter)
  try:
    yield
  finally:
    absl_logger.removeFilter(log_filter)
    tfds.display_progress_bar(previous)


def prepare(builder: tfds.core.DatasetBuilder) -> tfds.core.DatasetBuilder:
  """``download_and_prepare`` quietly (a no-op when already prepared)."""
  with _quiet():
    builder.download_and_prepare()
  return builder


def load_preference_source(path: str, split: str, data_dir: str,
                           **synthetic_kwargs) -> PreferenceSource:
  """Prepares (once, cached under ``data_dir``) and opens one split.

  ``path == ''`` selects the synthetic task (``synthetic_kwargs`` go to
  ``SyntheticPreferences``: num_train, num_test, seed, min_digits,
  max_digits); otherwise ``path`` is a local file or directory, prepared
  one split per config. ``test`` and ``validation`` stand in for each other.

  Several processes sharing ``data_dir`` should let one prepare first (TFDS
  writes to a temporary directory and renames it, but concurrent first
  preparations race).
  """
  if path and synthetic_kwargs:
    raise TypeError(f"synthetic options {sorted(synthetic_kwargs)} given "
                    f"with a local path {path!r}")
  with _quiet():
    if not path:
      builder = SyntheticPreferences(data_dir=data_dir, **synthetic_kwargs)
      split = "test" if split == "validation" else split
    else:
      builder = LocalPreferences(data_dir=data_dir, path=path, splits=(split,))
  prepare(builder)
  if split not in builder.info.splits:
    raise DataError(f"{path or 'synthetic'}: no {split!r} split; have "
                            f"{sorted(builder.info.splits)}")
  files = builder.builder_config.files.get(split, ()) if path else ()
  return PreferenceSource(builder.as_data_source(split=split),
                          name=f"{path or 'synthetic task'} (split {split!r})", files=files)
