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
import io
import json
import logging
import math
import os
import re
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from absl import logging as absl_logging
from etils import epath

from data import readers, synthetic
from data.errors import DataError, locate

_FILE_FORMAT = "array_record"
_TEXT_FIELDS = ("prompt", "chosen", "rejected")


def _features() -> tfds.features.FeaturesDict:
  """Texts, the example id and every PAIR_FIELD as float64, NaN where a record has none.

  ``rejected`` is "" for an unpaired record and ``chosen`` and ``rejected`` are "" for a
  prompt alone (a response is never empty: the readers refuse it); ``messages`` holds a conversation's messages as JSON ("" for text records);
  ``record`` is the example's index among its files' records (it differs from
  ``example_id`` in a split held out of another, see ``Holdout``); ``answer`` is the
  record's reference answer ("" for none: the readers refuse an empty one).
  """
  return tfds.features.FeaturesDict({
      "prompt": tfds.features.Text(),
      "chosen": tfds.features.Text(),
      "rejected": tfds.features.Text(),
      "messages": tfds.features.Text(),
      "answer": tfds.features.Text(),
      "example_id": np.int64,
      "record": np.int64,
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


class ArrayRecordBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Shared plumbing of this project's builders (abstract; also
  ``data.tokenized_cache.TokenizedPreferences``)."""

  code_path = _ThisModulePath()


_PAIR_FIELDS_NOTE = "PAIR_FIELDS (labels, preference_prob, scores) as float64, NaN = none."
_MESSAGES_NOTE = "Conversations' messages, unpaired records, record indices."
_ANSWER_NOTE = "Records' reference answers (`answer`)."


def _examples(records: list[dict],
              positions: Sequence[int] | None = None) -> Iterator[tuple[int, dict]]:
  """(key, example) of each record; ``positions``: the records' indices in their files."""
  # The readers accept only finite numbers, so NaN unambiguously means "not given".
  for i, r in enumerate(records):
    messages = r.get("messages")
    yield i, {"prompt": r["prompt"], "chosen": "" if r["chosen"] is None else r["chosen"],
              "rejected": "" if r["rejected"] is None else r["rejected"],
              "messages": "" if messages is None else json.dumps(messages, ensure_ascii=False),
              "answer": r.get("answer", ""), "example_id": i, "record": i if positions is None else int(positions[i]),
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


class SyntheticPreferences(ArrayRecordBuilder, skip_registration=True):
  """The built-in digit-sorting preference task as a TFDS dataset."""

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": _PAIR_FIELDS_NOTE,
                   "1.2.0": _MESSAGES_NOTE, "1.3.0": _ANSWER_NOTE}

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


@dataclasses.dataclass(frozen=True)
class Holdout:
  """An eval split held out of a path that has no split of that name, by prompt.

  Applies when the path's only split is its training split (a single file, or a
  directory of ``train.*`` files) and ``eval_split`` is missing: a seeded ``fraction`` of
  the records (at least one), whole prompts at a time, so that the pairs of one prompt
  never straddle train and eval. ``fraction`` 0 turns it off (the missing split is then
  an error, as before).
  """

  eval_split: str
  fraction: float
  seed: int = 0

  def source_split(self, path: str) -> str | None:
    """The split of ``path`` this eval split is held out of, or None when it does not apply."""
    return readers.held_out_of(path, self.eval_split) if self.fraction > 0 else None


@dataclasses.dataclass(eq=False, kw_only=True)
class LocalConfig(tfds.core.BuilderConfig):
  path: str = ""
  splits: tuple[str, ...] = ()
  # split -> files, resolved once when the config is made (and hashed).
  files: dict = dataclasses.field(default_factory=dict)
  # (source split, Holdout) when an eval split is held out of the source split.
  holdout: tuple = ()


def _slug(path: str) -> str:
  base = os.path.basename(os.path.normpath(path)) or "data"
  return re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_")[:40] or "data"


def local_config(path: str, splits: Sequence[str] | None = None,
                 holdout: Holdout | None = None) -> LocalConfig:
  """A config for ``path`` named by a hash of the content of its split files.

  ``splits`` defaults to every split ``readers.available_splits`` finds. With a
  ``holdout`` that applies to ``path``, the config has two splits: the source split less
  the held-out records, and ``holdout.eval_split``.
  """
  path = os.path.abspath(path)
  source = holdout.source_split(path) if holdout else None
  if source:
    splits = (source, holdout.eval_split)
  splits = tuple(splits) if splits else tuple(readers.available_splits(path))
  if not splits:
    raise DataError(f"{path}: no preference files found")
  files = {s: tuple(readers.split_files(path, source or s)) for s in splits}
  h = hashlib.sha256(f"reader={readers.READER_VERSION}\n".encode())
  if source:
    h.update(f"holdout={source}:{holdout.eval_split}:{holdout.fraction!r}:{holdout.seed}\n"
             .encode())
  for split in splits:
    for file in files[split]:
      h.update(f"{split}\0{os.path.relpath(file, path)}\0".encode())
      with open(file, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
          h.update(block)
      h.update(b"\0")
  name = f"{_slug(path)}_{h.hexdigest()[:16]}"
  return LocalConfig(name=name, path=path, splits=splits, files=files,
                     holdout=(source, holdout) if source else (),
                     description=f"Preference pairs read from {path}.")


def split_by_prompt(records: Sequence[dict], fraction: float, seed: int,
                    where: str) -> tuple[list[int], list[int]]:
  """(kept, held-out) record indices: whole prompts in a seeded hash order until at least
  ``fraction`` of the records (and at least one) are held out; one prompt always stays."""
  groups: dict[str, list[int]] = {}
  for i, record in enumerate(records):
    groups.setdefault(record["prompt"], []).append(i)
  if len(groups) < 2:
    raise DataError(f"{where}: every record has the same prompt, so no eval split can be held "
                    f"out by prompt; give one as a file (or set config.data.eval_fraction=0 "
                    f"and an existing config.data.eval_split)")
  key = lambda prompt: hashlib.sha256(f"{seed}\0{prompt}".encode("utf-8")).digest()  # noqa: E731
  want = max(1, round(fraction * len(records)))
  held: list[int] = []
  for prompt in sorted(groups, key=key)[:-1]:
    if len(held) >= want:
      break
    held.extend(groups[prompt])
  held_set = set(held)
  return [i for i in range(len(records)) if i not in held_set], sorted(held)


class LocalPreferences(ArrayRecordBuilder, skip_registration=True):
  """Local JSONL / JSON / Parquet preference files as a TFDS dataset."""

  VERSION = tfds.core.Version("1.3.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.", "1.1.0": _PAIR_FIELDS_NOTE,
                   "1.2.0": _MESSAGES_NOTE, "1.3.0": _ANSWER_NOTE}

  def __init__(self, *, config: LocalConfig | None = None, path: str | None = None,
               splits: Sequence[str] | None = None, holdout: Holdout | None = None,
               file_format: str = _FILE_FORMAT, **kwargs):
    if config is None:
      if not path:
        raise ValueError("LocalPreferences needs path= (or config=)")
      config = local_config(path, splits, holdout)
    super().__init__(config=config, file_format=file_format, **kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, description="Local preference pairs.",
        features=_features(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    cfg = self.builder_config
    if cfg.holdout:
      return self._held_out_splits()
    return {s: self._generate_examples(cfg.files[s]) for s in cfg.splits}

  def _held_out_splits(self):
    source, holdout = self.builder_config.holdout
    files = self.builder_config.files[source]
    records = readers.read_files(files)
    kept, held = split_by_prompt(records, holdout.fraction, holdout.seed,
                                 f"{', '.join(files)} (split {source!r})")
    return {source: _examples([records[i] for i in kept], kept),
            holdout.eval_split: _examples([records[i] for i in held], held)}

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
  ``fingerprint`` names the prepared split's content ("" when unknown), so that what is
  derived from it (``data.tokenized_cache``) can be cached under it.
  """

  def __init__(self, data_source, *, name: str = "preference source",
               files: Sequence[str] = (), fingerprint: str = ""):
    self._ds = data_source
    self.name = name
    self.files = tuple(files)
    self.fingerprint = fingerprint

  def locate(self, index: int, field: str | None = None) -> str:
    """Where example ``index`` came from: its file and line / record when local."""
    if self.files:
      return readers.locate_record(self.files, int(self._ds[index]["record"]), field)
    return locate(self.name, record=index, field=field)

  def position(self, index: int) -> int:
    """Example ``index``'s record number in its files' reading order (a held-out split's
    examples are some of its source split's records)."""
    return int(self._ds[index]["record"])

  @staticmethod
  def _convert(rec: dict) -> dict:
    """A stored example as the readers' record: 'rejected' None for an unpaired record,
    'messages' (decoded) for a conversation."""
    text = lambda v: v.decode("utf-8") if isinstance(v, bytes) else str(v)  # noqa: E731
    out = {k: text(rec[k]) for k in _TEXT_FIELDS}
    for side in ("chosen", "rejected"):  # the readers refuse empty responses: "" is none
      if not out[side]:
        out[side] = None
    messages = text(rec["messages"])
    if messages:
      out["messages"] = json.loads(messages)
    answer = text(rec["answer"])
    if answer:
      out["answer"] = answer
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
  # in BUILDER_CONFIGS (ours are all made on the fly), and "Variant folder ... has no
  # dataset_info.json" when asked whether a cache not yet written is prepared: pure noise.
  def filter(self, record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(("Using custom data configuration",
                                           "Variant folder"))


@contextlib.contextmanager
def quiet():
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


# A prepared split takes at least one array_record block per file, plus metadata.
MIN_SPLIT_BYTES = 256 * 1024
_SYNTHETIC_RECORD_BYTES = 512  # a generous bound on a digit-sorting record


def cache_bytes(builder) -> int:
  """About what preparing `builder` writes: its source files' size twice over (the parsed
  records, with their messages and file positions), or a per-record bound for the synthetic
  task; at least one block per split."""
  config = builder.builder_config
  if isinstance(config, LocalConfig):
    files = {f for fs in config.files.values() for f in fs}
    return 2 * sum(os.path.getsize(f) for f in files) + 2 * MIN_SPLIT_BYTES
  return ((config.num_train + config.num_test) * _SYNTHETIC_RECORD_BYTES
          + 2 * MIN_SPLIT_BYTES)


def prepare(builder: tfds.core.DatasetBuilder, check_space=None,
            needed: int | None = None) -> tfds.core.DatasetBuilder:
  """``download_and_prepare`` quietly (a no-op when already prepared).

  ``check_space(needed_bytes)`` is called first when the builder is not prepared yet, to
  refuse before writing into a disk that cannot hold the cache; ``needed`` defaults to
  ``cache_bytes(builder)``. TFDS's "Downloading and preparing" banner (printed, not
  logged) is replaced by one log line.
  """
  with quiet():
    if builder.is_prepared():
      return builder
  needed = cache_bytes(builder) if needed is None else needed
  if check_space is not None:
    check_space(needed)
  absl_logging.info("preparing the data cache (about %d KB) in %s", needed // 1024,
                    builder.data_dir)
  with quiet(), contextlib.redirect_stdout(io.StringIO()):
    builder.download_and_prepare()
  return builder


def load_preference_source(path: str, split: str, data_dir: str,
                           holdout: Holdout | None = None, check_space=None,
                           **synthetic_kwargs) -> PreferenceSource:
  """Prepares (once, cached under ``data_dir``) and opens one split.

  ``path == ''`` selects the synthetic task (``synthetic_kwargs`` go to
  ``SyntheticPreferences``: num_train, num_test, seed, min_digits,
  max_digits); otherwise ``path`` is a local file or directory, prepared
  one split per config. ``test`` and ``validation`` stand in for each other.
  ``holdout`` (local paths): when ``path`` lacks ``holdout.eval_split`` and has one
  split only, that split and the eval split are the two parts of a ``Holdout``
  (pass the same ``Holdout`` for both; loading the eval split logs the sizes once).
  ``check_space(needed_bytes)``: see ``prepare``.

  Several processes sharing ``data_dir`` should let one prepare first (TFDS
  writes to a temporary directory and renames it, but concurrent first
  preparations race).
  """
  if path and synthetic_kwargs:
    raise TypeError(f"synthetic options {sorted(synthetic_kwargs)} given "
                    f"with a local path {path!r}")
  with quiet():
    if not path:
      holdout = None
      builder = SyntheticPreferences(data_dir=data_dir, **synthetic_kwargs)
      split = "test" if split == "validation" else split
    else:
      source = holdout.source_split(path) if holdout else None
      if not source or split not in (source, holdout.eval_split):
        holdout = None
      builder = LocalPreferences(data_dir=data_dir, path=path, splits=(split,),
                                 holdout=holdout)
  prepare(builder, check_space)
  if split not in builder.info.splits:
    raise DataError(f"{path or 'synthetic'}: no {split!r} split; have "
                            f"{sorted(builder.info.splits)}")
  files = builder.builder_config.files.get(split, ()) if path else ()
  if holdout and split == holdout.eval_split:
    _log_holdout(path, builder, holdout)
  # The config name hashes the files (or names every synthetic setting): with the
  # builder's version and the split, it names the split's content.
  content = f"{builder.name}/{builder.builder_config.name}/{builder.version}/{split}"
  return PreferenceSource(builder.as_data_source(split=split),
                          name=f"{path or 'synthetic task'} (split {split!r})", files=files,
                          fingerprint=content)


def _log_holdout(path: str, builder, holdout: Holdout) -> None:
  source, _ = builder.builder_config.holdout
  sizes = {s: builder.info.splits[s].num_examples for s in (source, holdout.eval_split)}
  absl_logging.info(
      "%s has no %r split: held out %d of its %d %r records by prompt as the eval split "
      "(config.data.eval_fraction=%g, seed %d); training uses the other %d",
      path, holdout.eval_split, sizes[holdout.eval_split], sum(sizes.values()), source,
      holdout.fraction, holdout.seed, sizes[source])
