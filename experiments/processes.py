"""Running one benchmark process and reading the JSON line it prints last."""

import json
import os
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_json(command: list[str]) -> dict:
  """Runs `command` in the repository root; returns the last line of its stdout that starts
  with '{', parsed. Raises RuntimeError with the command and the output tails otherwise."""
  proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode or not lines:
    raise RuntimeError(f"{shlex.join(command)} failed ({proc.returncode}):\n"
                       f"{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
  return json.loads(lines[-1])


def portable(command: list[str]) -> str:
  """`command` as a shell line for a results file: this interpreter written as `python`,
  absolute paths in or beside the checkout made relative to it (`.venv-trl/bin/python`,
  `../shared/bench/...`) and any other absolute path cut to its last part (`$(which python)`
  as `python`), so the line names no machine's folders."""

  def word(w: str) -> str:
    if w == sys.executable:
      return "python"
    if not os.path.isabs(w):
      return w
    relative = os.path.relpath(w, ROOT)
    outside = relative.startswith(os.path.join(os.pardir, os.pardir))
    return os.path.basename(w) if outside else relative

  return shlex.join(word(w) for w in command)
