"""experiments/device_check.py: fails fast without a GPU, and its dry run works on a CPU."""

import json
import os
import subprocess
import sys

import jax
import pytest

from experiments import device_check

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.skipif(jax.default_backend() == 'gpu', reason='checks the no-GPU path')
def test_refuses_to_run_without_gpu(tmp_path):
  out = tmp_path / 'report.json'
  proc = subprocess.run([sys.executable, '-m', 'experiments.device_check', f'--report={out}'],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert proc.returncode != 0
  assert 'no GPU here' in proc.stderr and '--dry_run' in proc.stderr
  assert not out.exists()


def test_summary_medians_and_ratio():
  records = [
      {'name': 'ours', 'rc': 0, 'result': {'tokens_per_s': 100.0, 'mfu': 0.5}},
      {'name': 'trl', 'rc': 0, 'result': {'tokens_per_s': 50.0, 'mfu': None}},
      {'name': 'ours', 'rc': 0, 'result': {'tokens_per_s': 120.0, 'mfu': 0.6}},
      {'name': 'remat_dots', 'rc': 1, 'result': None},  # e.g. out of memory
      {'name': 'remat_offload', 'skipped': 'budget'},
  ]
  summary = device_check.summarize(records)
  assert summary['tokens_per_s'] == {'ours': 110.0, 'trl': 50.0}
  assert summary['ours_over_trl'] == pytest.approx(2.2)
  assert summary['mfu'] == {'ours': pytest.approx(0.55)}


@pytest.mark.slow  # ~1 min on 2 idle CPU cores, several minutes under load
def test_dry_run_writes_the_report(tmp_path):
  out = tmp_path / 'report.json'
  proc = subprocess.run([sys.executable, '-m', 'experiments.device_check', '--dry_run',
                         f'--report={out}', '--budget_s=280'], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  report = json.loads(out.read_text())
  steps = {step['name']: step for step in report['steps']}
  assert steps['gpu_tests']['rc'] == 0
  attention = steps['cudnn_attention']['result']
  assert attention['implementation'] in ('xla', 'cudnn')
  for errors in attention['max_abs_error'].values():
    assert max(errors.values()) < 0.05  # bf16
  plan = steps['memory_plan']['result']
  assert plan['temp_bytes'] > 0 and plan['argument_copy_bytes'] == 0, plan
  assert steps['ours']['rc'] == 0 and steps['ours']['result']['tokens_per_s'] > 0
  assert 'trl' in steps  # run, or skipped with its reason
  assert report['summary']['tokens_per_s']['ours'] > 0
  assert report['card']
