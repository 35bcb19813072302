"""`make demo`'s script, run as a newcomer runs it: it must finish and say what happened."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_demo_schedules_every_pod_through_the_real_extender_and_simulates() -> None:
    proc = subprocess.run([sys.executable, "scripts/demo.py"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    out = proc.stdout
    m = re.search(r"(\d+) pods bound, (\d+) found no node", out)
    # the default run, as make demo runs it: every pod bound or left pending by count
    assert m and int(m.group(1)) + int(m.group(2)) == 240 and int(m.group(1)) > 200, out
    best = re.search(r"multi-GPU pods on the best set their node offers: (\d+) of (\d+)", out)
    assert best and int(best.group(2)) > 0, out
    assert re.search(r"^topology\s+\d+\.\d%", out, re.M), out  # the simulator's table
    assert "Traceback" not in proc.stderr, proc.stderr[-4000:]
