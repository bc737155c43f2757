"""Load: a search of 200 tiny trials (1 epoch on 280 images, CPU), run by benchmarks/bench_load.py.

The driver's peak memory stays under 2 GB, every trial is in trials.csv, and `fer-tune report` takes under
30 s. The benchmark runs in its own process (it is the driver and starts its own Ray), so its peak RSS is the
driver's alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.long, pytest.mark.timeout(1500)]

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_load.py"


def test_200_tiny_trials_fit_in_2_gb_and_report_in_30_s(tmp_path: Path) -> None:
    figures_path = tmp_path / "figures.json"
    done = subprocess.run(
        [
            sys.executable,
            str(BENCH),
            "--trials",
            "200",
            "--workdir",
            str(tmp_path),
            "--json",
            str(figures_path),
        ],
        capture_output=True,
        text=True,
        timeout=1400,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    figures = json.loads(figures_path.read_text())
    print(json.dumps(figures, indent=1))  # the figures, with -s
    assert figures["exit_status"] == 0
    assert figures["driver_peak_rss_mib"] < 2048
    trials = pd.read_csv(tmp_path / "results" / "load" / "trials.csv")
    assert len(trials) == 200 and trials["trial_id"].is_unique
    assert (trials["stop_reason"] == "completed").all() and (trials["epochs"] == 1).all()
    assert figures["report_exit_status"] == 0 and figures["report_seconds"] < 30
    assert (tmp_path / "results" / "load" / "report" / "report.md").is_file()
