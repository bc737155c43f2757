"""benchmarks/bench_search.py without a real search: its arms' space files, its report over repeats (mean
+- std, paired differences to random search, the verdict), and resuming, with synthetic runs and a fake
runner."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fer_tune.search import load_space
from fer_tune.training import RunConfig

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
try:
    import bench_search
    from search_arms import Arm, Stats, paired, summary, table, verdict, verdicts
finally:
    sys.path.pop(0)

BUDGET_S = 600.0
# Best PublicTest per repeat: warm ahead of random by 1-2 points every time; cold around random.
BESTS = {
    "warm": [0.62, 0.61, 0.63],
    "cold": [0.60, 0.62, 0.60],
    "random": [0.60, 0.60, 0.61],
    "hand": [0.57, 0.575, 0.57],
}


def synthetic_runs(bests: dict[str, list[float]] = BESTS) -> list[Arm]:
    """Runs whose anytime points climb to their best at 5 minutes; one epoch after the budget is ignored."""
    runs = []
    for r in range(3):
        for name, accs in bests.items():
            best = accs[r]
            points = [(60.0, best - 0.1), (300.0, best), (200.0, best - 0.05), (BUDGET_S + 1, 0.99)]
            runs.append(Arm(name, f"the {name} arm", r, points, trials=4, epochs=10, exit_status=0, load=1.0))
    return runs


def test_stats_over_repeats() -> None:
    s = Stats([1.0, 2.0, 3.0])
    assert (s.n, s.mean, s.std, s.se) == (3, 2.0, 1.0, pytest.approx(1 / 3**0.5))
    assert s.shown("+.2f", " points") == "+2.00 ± 1.00 points"
    assert Stats([5.0]).std is None and Stats([5.0]).shown() == "5.00"  # one repeat: no spread
    assert Stats([]).shown() == "-"


def test_the_report_gives_mean_std_and_paired_differences_to_random_search() -> None:
    runs = synthetic_runs()
    assert runs[0].best(BUDGET_S) == (300.0, 0.62)  # the epoch after the budget does not count
    bests = summary(runs, BUDGET_S)
    assert bests["warm"].values == pytest.approx([62.0, 61.0, 63.0])
    assert bests["warm"].shown() == "62.00 ± 1.00"
    diffs = paired(runs, BUDGET_S)
    assert set(diffs) == {"warm", "cold", "hand"}  # random is the reference
    assert list(diffs["warm"].values()) == pytest.approx([2.0, 1.0, 2.0])
    assert list(diffs["cold"].values()) == pytest.approx([0.0, 2.0, -1.0])

    assert verdict(list(diffs["warm"].values())).startswith("better than random beyond the noise: mean +1.67")
    assert verdict(list(diffs["cold"].values())).startswith("within the noise: mean +0.33, 2 SE 1.76")
    assert verdict(list(diffs["hand"].values())).startswith("worse than random beyond the noise")
    assert verdict([1.5]) == "n < 2: no noise estimate"

    md = table(runs, BUDGET_S)
    row = next(line for line in md.splitlines() if line.startswith("| warm | the warm arm |"))
    assert "| 3 | 4.0 | 10.0 | 62.00 ± 1.00 | 5.0 |" in row  # repeats, configs, epochs, best, minutes
    # Points ahead of the hand recipe of the same repeat; minutes to reach its best (5 in repeat 1, 3.3 else)
    assert row.endswith("| +4.83 ± 1.26 | 3.9 (3/3) |")
    paired_row = next(line for line in md.splitlines() if line.startswith("| warm | +2.00 |"))
    assert "| +2.00 | +1.00 | +2.00 | +1.67 ± 0.58 | better than random beyond the noise" in paired_row
    assert "| random | 60.00% (4, 1.0) | 60.00% (4, 1.0) | 61.00% (4, 1.0) |" in md  # each run
    lines = verdicts(runs, BUDGET_S)
    assert lines[0].startswith("warm: best PublicTest 62.00 ± 1.00% over 3 repeat(s); vs random +1.67")
    assert lines[2] == "random: best PublicTest 60.33 ± 0.58% over 3 repeat(s)"


def test_one_repeat_and_a_run_that_reached_nothing() -> None:
    runs = [a for a in synthetic_runs() if a.repeat == 0]
    runs.append(Arm("cold", "the cold arm", 1, [(BUDGET_S + 5, 0.7)], exit_status=130))  # nothing in time
    assert paired(runs, BUDGET_S)["cold"] == {0: 0.0}  # repeat 1 has no pair: left out
    md = table(runs, BUDGET_S)
    assert "| n < 2: no noise estimate |" in md and "| cold | - (0, nan) |" not in md
    assert "| cold | 60.00% (4, 1.0) | - (0, -) |" in md


def test_the_curves_are_drawn(tmp_path: Path) -> None:
    bench_search.plot(synthetic_runs(), BUDGET_S, tmp_path / "curves.png")
    assert (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_each_arm_searches_the_space_with_its_seed(tmp_path: Path) -> None:
    cpu = load_space("cpu")
    space = Path(cpu.source)
    warm = load_space(bench_search.arm_space(space, "warm", 2, tmp_path))
    assert warm.search.algorithm == "optuna" and warm.search.scheduler == "asha"
    assert warm.search.points_to_evaluate == cpu.search.points_to_evaluate
    # The warm start's folder, relative to the space file, still found from the copy's folder.
    assert warm.search.warm_start == [str(ROOT / "results" / "cpu-amx")]
    assert warm.search.seed == 2 and warm.groups["seed"] == 2 and cpu.groups["seed"] == 0
    assert {k: v for k, v in warm.groups.items() if k != "seed"} == {
        k: v for k, v in cpu.groups.items() if k != "seed"
    }
    cold = load_space(bench_search.arm_space(space, "cold", 0, tmp_path))
    assert cold.search.algorithm == "optuna" and cold.search.scheduler == "asha"
    assert not cold.search.points_to_evaluate and not cold.search.warm_start
    random = load_space(bench_search.arm_space(space, "random", 0, tmp_path))
    assert (random.search.algorithm, random.search.scheduler) == ("random", "none")
    gp = load_space(bench_search.arm_space(space, "gp", 1, tmp_path))
    assert gp.search.algorithm == "gp" and gp.search.warm_start == warm.search.warm_start
    assert gp.search.points_to_evaluate == cpu.search.points_to_evaluate
    hand = RunConfig.from_yaml(bench_search.hand_config(2, tmp_path))
    assert hand.seed == 2 and hand.train.lr == RunConfig.from_yaml(bench_search.HAND).train.lr


def test_a_rerun_skips_the_finished_runs_and_redoes_the_rest(tmp_path: Path, capsys) -> None:
    runs = tmp_path / "runs"
    settings = {"budget_s": BUDGET_S, "space": "search_spaces/cpu.yaml", "num_samples": None, "cpus": None}
    calls: list[tuple[str, int]] = []
    fail = {("cold", 1)}

    def fake(name: str, repeat: int) -> Arm:
        calls.append((name, repeat))
        folder = runs / f"{name}-r{repeat}"
        folder.mkdir(parents=True)  # what the real run leaves: its folder, then its record
        (runs / f"{name}-r{repeat}.log").write_text("log\n")
        if (name, repeat) in fail:  # a bad flag: no epoch, exit status 2
            return Arm(name, name, repeat, exit_status=2)
        return Arm(name, name, repeat, [(10.0 + repeat, 0.5)], trials=1, epochs=1, exit_status=0)

    arms = ["warm", "cold", "random"]
    first = bench_search.run_all(runs, arms, 2, settings, fake)
    assert calls == [(a, r) for r in range(2) for a in arms]  # repeat by repeat
    assert [a.run_name for a in first if a.failed()] == ["cold-r1"]
    assert not (runs / "cold-r1.json").exists() and (runs / "warm-r1.json").is_file()

    calls.clear()
    fail.clear()
    (runs / "cold-r1" / "stale").write_text("a file of the run that failed")
    again = bench_search.run_all(runs, arms, 2, settings, fake)
    assert calls == [("cold", 1)]  # run again, from scratch: its folder was removed first
    assert not (runs / "cold-r1" / "stale").exists() and (runs / "cold-r1.json").is_file()
    assert [(a.run_name, a.points) for a in again] == [(a.run_name, [(10.0 + a.repeat, 0.5)]) for a in again]
    assert "[warm-r0] finished earlier" in capsys.readouterr().out

    calls.clear()
    more = bench_search.run_all(runs, [*arms, "hand"], 3, settings, fake)  # more arms and repeats: only those
    assert calls == [("hand", 0), ("hand", 1), ("warm", 2), ("cold", 2), ("random", 2), ("hand", 2)]
    assert len(more) == 12
    record = json.loads((runs / "warm-r0.json").read_text())
    assert record["settings"] == settings and record["arm"]["points"] == [[10.0, 0.5]]

    with pytest.raises(SystemExit, match="made with .* use another --out"):
        bench_search.run_all(runs, arms, 1, {**settings, "budget_s": 60.0}, fake)


def test_bad_arms_or_repeats_are_refused(capsys) -> None:
    for argv in (["--arms", "warm,tpe"], ["--arms", "warm,warm"], ["--repeats", "0"]):
        with pytest.raises(SystemExit):
            bench_search.main(["--data", "x", *argv])
        assert "argument --" in capsys.readouterr().err


def test_the_command_writes_the_report_and_a_rerun_runs_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    """main() with the runs faked (no data, no Ray): two repeats of warm, random and hand, then the same
    command again, which reads every run back."""
    ran: list[str] = []

    def fake_search(arm: Arm, space: Path, args, runs: Path, budget_s: float) -> None:
        ran.append(arm.run_name)
        assert load_space(space).search.seed == arm.repeat
        arm.exit_status, arm.trials, arm.epochs = 0, 2, 3
        arm.points = [(30.0, 0.5 + 0.01 * arm.repeat + (0.02 if arm.name == "warm" else 0.0))]

    def fake_hand(arm: Arm, config: Path, args, runs: Path, budget_s: float) -> None:
        ran.append(arm.run_name)
        assert RunConfig.from_yaml(config).seed == arm.repeat
        arm.exit_status, arm.trials, arm.epochs, arm.points = 0, 1, 2, [(40.0, 0.45)]

    monkeypatch.setattr(bench_search, "load_fer2013", lambda path: None)
    monkeypatch.setattr(bench_search, "run_search_arm", fake_search)
    monkeypatch.setattr(bench_search, "run_hand_arm", fake_hand)
    argv = [
        "--data",
        "x",
        "--budget",
        "1m",
        "--out",
        str(tmp_path),
        "--repeats",
        "2",
        "--arms",
        "warm,random,hand",
    ]
    assert bench_search.main(argv) == 0
    assert ran == ["warm-r0", "random-r0", "hand-r0", "warm-r1", "random-r1", "hand-r1"]
    record = json.loads((tmp_path / "bench_search.json").read_text())
    assert record["repeats"] == 2 and record["arms_run"] == ["warm", "random", "hand"]
    assert record["summary"]["warm"]["points"] == pytest.approx([52.0, 53.0])
    assert record["paired_to_random"]["warm"]["points"] == pytest.approx([2.0, 2.0])
    assert record["paired_to_random"]["warm"]["verdict"].startswith("better than random beyond the noise")
    md = (tmp_path / "table.md").read_text()
    assert "--repeats 2 --arms warm,random,hand`" in md and "| warm | +2.00 | +2.00 | +2.00 ± 0.00 |" in md
    assert (
        tmp_path / "curves.png"
    ).is_file() and "warm: best PublicTest 52.50 ± 0.71%" in capsys.readouterr().out
    ran.clear()
    assert bench_search.main(argv) == 0 and ran == []
    assert json.loads((tmp_path / "bench_search.json").read_text())["arms"] == record["arms"]


def test_a_stopped_bench_stops_its_running_command_and_keeps_the_finished_runs(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    """Ctrl-C (KeyboardInterrupt in the bench) interrupts the command it runs, which ends, and the bench
    exits 130 with the finished runs' records kept, instead of going on with the next run."""
    # The child sets its SIGINT handler as fer-tune does: one started with SIGINT ignored (pytest run in the
    # background by a script) would otherwise inherit that and wait out the kill.
    child = "import signal, time; signal.signal(signal.SIGINT, signal.default_int_handler); "
    child += "print('started', flush=True); time.sleep(60)"
    cmd = [sys.executable, "-c", child]
    log = tmp_path / "run.log"

    def stop(t0: float) -> None:
        if "started" in log.read_text():
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        bench_search._run(cmd, log, budget_s=600.0, poll=stop)
    assert "KeyboardInterrupt" in log.read_text()  # the command got the SIGINT and ended: no orphan left

    ran: list[str] = []

    def fake_search(arm: Arm, space: Path, args, runs: Path, budget_s: float) -> None:
        ran.append(arm.run_name)
        if arm.name == "random":
            raise KeyboardInterrupt
        arm.exit_status, arm.trials, arm.epochs, arm.points = 0, 1, 1, [(30.0, 0.5)]

    monkeypatch.setattr(bench_search, "load_fer2013", lambda path: None)
    monkeypatch.setattr(bench_search, "run_search_arm", fake_search)
    argv = ["--data", "x", "--budget", "1m", "--out", str(tmp_path), "--arms", "warm,random,cold"]
    assert bench_search.main(argv) == 130
    assert ran == ["warm-r0", "random-r0"]  # cold never started
    runs = tmp_path / "runs"
    assert (runs / "warm-r0.json").is_file() and not (runs / "random-r0.json").exists()
    assert "the same command continues" in capsys.readouterr().err
