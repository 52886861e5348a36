"""A workdir holds one run: one writer at a time, one config, and a record of every change.

    with workdir.claim(path):                       # refuses a second writer (WorkdirBusyError)
      changes = workdir.check_resume(config, path)  # refuses a changed result (ConfigDriftError)
      ...                                           # build, restore the newest checkpoint
      workdir.record_config(config, path, changes, step=start)   # config.json, history

* **The lock** (`claim`): an advisory `fcntl.flock` on `WORKDIR/.lock`, held for the life of
  the run by process 0 (the process that writes the shared files; the others take none). The
  file names the holder (host, pid, start time, command), so a second run is refused with one
  line naming it. The kernel drops the lock when its holder dies, so a lock left by a killed run
  is taken over at once, with a warning naming the run that died.
* **The run's identity is its config** (`check_resume`): a workdir that already trained (a
  checkpoint or an online round on disk) resumes only under the config it was started with.
  Each field of the saved `config.json` is compared with the new config; a changed field that
  changes what the run computes refuses the resume, listing every such field as
  `old -> new`. `FREE_FIELDS` names the fields that do not (logging, checkpoint cadence, the
  progress bar, the step count, evaluation cadence, the device layout, the speed knobs), and
  `config.resume.allow_changes` lets a researcher change any other field on purpose.
* **The record** (`record_config`): `config.json` is (re)written only after every check has
  passed (this one, and the checkpoint's data-position check at restore), atomically, and
  each accepted change is appended to `config_history.jsonl` with the step it took effect.
* **Out of space**: `check_free_space` refuses before a cache is written; `io_error` turns
  an `OSError` of a write into one line naming what could not be written and why.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import json
import os
import shutil
import socket
import sys

from absl import logging

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Fields whose change leaves a resumed run's result as it was (each change is still recorded);
# a prefix covers its section. Every other field is the run's identity.
FREE_FIELDS = {
    "name": "the preset's label",
    "total_steps": "the run is extended or ended earlier (a decaying schedule is stretched "
                   "from the resumed step on)",
    "log_every": "logging cadence",
    "eval_every": "evaluation cadence",
    "eval_batch_size": "evaluation batching (eval metrics are exact averages)",
    "checkpoint_every": "checkpoint cadence",
    "keep_checkpoints": "how many checkpoints are kept",
    "progress_bar": "display",
    "mesh": "the device layout (the same maths on other devices)",
    "model.remat": "activation memory (the same maths)",
    "model.mlp_impl": "a speed knob (the same maths)",
    "model.attention_impl": "a speed knob (the same maths)",
    "model.attention_query_blocks": "a speed knob (the same maths)",
    "model.logp_chunk_size": "a speed knob (the same maths)",
    "model.logits_on": "a speed knob (the same maths)",
    "model.share_prompt": "a speed knob (the same maths)",
    "reference.mode": "where the reference log-probs are computed (the same maths)",
    "data.data_dir": "where the data cache lives",
    "online.rounds": "more (or fewer) rounds; the finished rounds are unchanged",
    "resume": "how this resume is checked",
    "export": "what is written at the end",
}


class WorkdirError(RuntimeError):
  """A run refused because of its workdir; the message is one line for the user."""


class WorkdirBusyError(WorkdirError):
  """Another process holds the workdir's lock."""


class ConfigDriftError(WorkdirError):
  """The workdir's run was started with a config whose result this one would change."""


class WorkdirIOError(WorkdirError):
  """A write into the workdir failed (no space left, read-only, I/O error)."""


# ----------------------------------------------------------------------------------------------
# The lock


def _holder_line(holder: dict) -> str:
  return (f"pid {holder.get('pid', '?')} on host {holder.get('host', '?')} "
          f"(started {holder.get('started', '?')})")


def _read_holder(fd: int) -> dict:
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 65536).decode("utf-8", "replace")
  try:
    holder = json.loads(text) if text.strip() else {}
  except json.JSONDecodeError:
    holder = {}
  return holder if isinstance(holder, dict) else {}


def _alive(pid) -> bool:
  if not isinstance(pid, int) or pid <= 0:
    return False
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # alive, another user's
    return True
  return True


_held: dict[str, list] = {}  # realpath -> [fd, depth]: claims nest within one process


@contextlib.contextmanager
def claim(workdir: str, *, writer: bool = True):
  """Holds `WORKDIR/.lock` for the `with` block; `writer=False` (processes > 0) takes none.

  Raises `WorkdirBusyError` at once, naming the holder, when another process holds it. Nested
  claims of one workdir in one process (the CLI claims before the heavy imports, `train`
  claims again) share the lock.
  """
  if not writer:
    yield
    return
  os.makedirs(workdir, exist_ok=True)
  key = os.path.realpath(workdir)
  if key in _held:
    _held[key][1] += 1
    try:
      yield
    finally:
      _held[key][1] -= 1
    return
  path = os.path.join(workdir, LOCK_FILE)
  fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    holder = _read_holder(fd)
    os.close(fd)
    raise WorkdirBusyError(
        f"workdir {workdir} is in use by {_holder_line(holder)}, which holds {path}; wait for "
        "it to finish or use another workdir") from None
  previous = _read_holder(fd)
  if previous:  # a clean exit empties the file: that run died holding the lock
    here = previous.get("host") == socket.gethostname()
    logging.warning("workdir %s: taking over the lock left by %s, %s", workdir,
                    _holder_line(previous),
                    "which is no longer running" if here and not _alive(previous.get("pid"))
                    else "which no longer holds it")
  me = {"host": socket.gethostname(), "pid": os.getpid(),
        "started": datetime.datetime.now().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv)[:1000]}
  os.ftruncate(fd, 0)
  os.pwrite(fd, json.dumps(me).encode(), 0)
  _held[key] = [fd, 1]
  try:
    yield
  finally:
    del _held[key]
    try:
      os.ftruncate(fd, 0)  # a clean exit leaves an empty lock file (nothing to take over)
    except OSError:
      pass
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


# ----------------------------------------------------------------------------------------------
# The run's identity


def flatten(tree, prefix: str = "") -> dict:
  """{"loss.beta": 0.1, ...}: the leaves of a nested dict by dotted path (lists are leaves)."""
  out = {}
  for key, value in tree.items():
    path = f"{prefix}{key}"
    if isinstance(value, dict):
      out.update(flatten(value, path + "."))
    else:
      out[path] = list(value) if isinstance(value, tuple) else value
  return out


def config_dict(config) -> dict:
  """The config as `config.json` stores it (tuples become lists)."""
  return json.loads(config.to_json_best_effort())


def free_reason(path: str) -> str | None:
  """Why changing `path` leaves the run's result unchanged; None if it is the identity."""
  for prefix, reason in FREE_FIELDS.items():
    if path == prefix or path.startswith(prefix + "."):
      return reason
  return None


def allowed_changes(config) -> list[str]:
  """The fields of `config.resume.allow_changes` ("a.b,c.d"), as a list."""
  text = config.get("resume", {}).get("allow_changes", "") or ""
  return [name.strip() for name in text.split(",") if name.strip()]


def _covered(path: str, names: list[str]) -> bool:
  return any(path == n or path.startswith(n + ".") for n in names)


def _show(value) -> str:
  return json.dumps(value) if isinstance(value, str) else repr(value)


def has_progress(workdir: str) -> bool:
  """Whether the workdir holds trained state: a checkpoint step or an online round."""
  def has_step(checkpoints):
    return os.path.isdir(checkpoints) and any(n.isdigit() for n in os.listdir(checkpoints))

  if not os.path.isdir(workdir):
    return False
  return has_step(os.path.join(workdir, "checkpoints")) or any(
      n.startswith("round_") for n in os.listdir(workdir))


def saved_config(workdir: str) -> dict | None:
  """The workdir's `config.json`, or None when there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise WorkdirError(f"{path}: cannot read the run's saved config ({e}); it records what "
                       "this workdir trained, so it is not replaced: repair it or use another "
                       "workdir") from None
  if not isinstance(saved, dict):
    raise WorkdirError(f"{path}: the run's saved config is not a JSON object")
  return saved


def check_resume(config, workdir: str) -> dict:
  """The changes from the workdir's saved config to `config`, when the workdir has trained.

  Returns {path: (old, new)} of the accepted changes (free fields and allowed ones); raises
  `ConfigDriftError` listing every other changed field. Fields present in only one of the
  two configs (another version of the code) are not compared.
  """
  saved = saved_config(workdir) if has_progress(workdir) else None
  if saved is None:
    return {}
  old, new = flatten(saved), flatten(config_dict(config))
  changed = {p: (old[p], new[p]) for p in sorted(old.keys() & new.keys()) if old[p] != new[p]}
  allowed = allowed_changes(config)
  refused = [p for p in changed if free_reason(p) is None and not _covered(p, allowed)]
  if refused:
    listed = ", ".join(f"{p}: {_show(changed[p][0])} -> {_show(changed[p][1])}"
                       for p in refused)
    raise ConfigDriftError(
        f"{workdir} holds a run trained with another config ({listed}); resuming would "
        "change its result. Restore the value, use a new workdir, or change it on purpose "
        f"with --config.resume.allow_changes={','.join(refused)}")
  return changed


def _write_atomically(path: str, text: str) -> None:
  tmp = path + ".tmp"
  try:
    with open(tmp, "w", encoding="utf-8") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise io_error(e, f"write {path}") from None


def record_config(config, workdir: str, changes: dict, *, step: int | None) -> None:
  """Writes `config.json` (atomically) and appends the accepted `changes` to the history.

  Call it only once every check has passed: the file is the record of what the run did.
  Only process 0 calls it. `step`: where the changes take effect (None: an online run, whose
  rounds each restart their step count; the history line then has no step).
  """
  os.makedirs(workdir, exist_ok=True)
  if changes:
    entry = {"time": datetime.datetime.now().isoformat(timespec="seconds"),
             **({} if step is None else {"step": int(step)}),
             "changes": {p: {"old": o, "new": n, "why": free_reason(p) or "allow_changes"}
                         for p, (o, n) in changes.items()}}
    history = os.path.join(workdir, HISTORY_FILE)
    try:
      with open(history, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
      raise io_error(e, f"write {history}") from None
    logging.info("resuming (at step %s) with changed config fields: %s", step,
                 ", ".join(f"{p}: {_show(o)} -> {_show(n)}" for p, (o, n) in changes.items()))
  _write_atomically(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))


def change_note(changes: dict) -> dict:
  """The metrics.jsonl fields that record `changes` at the step they took effect."""
  return {"config/changed": {p: [o, n] for p, (o, n) in changes.items()}} if changes else {}


# ----------------------------------------------------------------------------------------------
# Space and I/O failures


def io_error(e: BaseException, what: str) -> WorkdirIOError:
  """One line for a failed write: `could not <what>: No space left on device`.

  `e` may wrap the OSError (orbax and tensorstore re-raise it in their own types); the
  strerror of the first OSError in the chain is used, else the message's last line.
  """
  cause, seen = e, set()
  while cause is not None and id(cause) not in seen:
    seen.add(id(cause))
    if isinstance(cause, OSError) and cause.strerror:
      return WorkdirIOError(f"could not {what}: {cause.strerror}")
    cause = cause.__cause__ or cause.__context__
  text = str(e)
  for known in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES):
    if os.strerror(known) in text:
      return WorkdirIOError(f"could not {what}: {os.strerror(known)}")
  lines = [line.strip() for line in text.splitlines() if line.strip()]
  return WorkdirIOError(f"could not {what}: {type(e).__name__}: {lines[-1] if lines else ''}")


def check_free_space(directory: str, needed: int, what: str) -> None:
  """Refuses (WorkdirIOError) before writing about `needed` bytes of `what` into `directory`
  when its filesystem has less free space."""
  probe = directory
  while not os.path.exists(probe):
    probe = os.path.dirname(probe) or "."
  free = shutil.disk_usage(probe).free
  if free < needed:
    raise WorkdirIOError(
        f"not enough space for {what} in {directory}: needs about {needed:,} bytes, "
        f"{free:,} free")
