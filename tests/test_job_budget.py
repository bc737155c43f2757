"""One time budget for a search and its retrain (`fer_tune.search.job_budget`), and the CPU share trials got
(`fer_tune.search.cpu_share`): the arithmetic and the texts without Ray, then one search with `--retrain`."""

from __future__ import annotations

import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
from rich.console import Console

from fer_tune.base import ConfigError, FerTuneError
from fer_tune.search import (
    BudgetStopper,
    CpuShare,
    JobBudget,
    RetrainPlan,
    load_space,
    parse_space,
    plan_epochs,
)
from fer_tune.search.cpu_share import SMALL_SHARE, share_line, typical_share
from fer_tune.search.job_budget import (
    MARGIN,
    add_spent,
    clock,
    job_summary,
    measured_epoch,
    plan_retrain,
    read_budget,
    scoring_seconds,
    split_budget,
    write_budget,
)
from fer_tune.search.progress import LiveView
from fer_tune.search.retrain_reserve import END_S, RetrainReserve
from fer_tune.search.space_options import check_search

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ROOT / "results" / "smoke-cpu"  # a committed search: 10 trials, their per-epoch times

# The `cpu` space's retrain: 3 seeds of the 5-stage VGG, at most 28 epochs, at least its own 12, in the 55% of
# 100 minutes the search leaves. Epoch and scoring times: with AMX in bf16 (the 2026-11-30 reference: 3 x 28
# epochs in 47 minutes; scoring in fp32) and without (fp32 at 567 images/s, issue 25).
LEFT = 0.55 * 100 * 60
FAST = {"epoch_s": 34.0, "score_s": 85.0}
SLOW = {"epoch_s": 55.0, "score_s": 63.0}


def _planned(epochs: int, seeds: int, epoch_s: float, score_s: float) -> float:
    return seeds * (epochs * epoch_s + score_s)


# -- the arithmetic ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("machine", "expected"), [(FAST, 26), (SLOW, 17)])
def test_fast_and_slow_machines_plan_epochs_that_fit_the_budget(machine: dict, expected: int) -> None:
    epochs, why = plan_epochs(LEFT, 3, machine["epoch_s"], machine["score_s"], cap=28, minimum=12)
    assert (epochs, why) == (expected, "fits")
    assert MARGIN * _planned(epochs, 3, **machine) <= LEFT  # ends within the budget, with its margin
    assert MARGIN * _planned(epochs + 1, 3, **machine) > LEFT  # and one more epoch would not


def test_a_machine_faster_than_the_cap_needs_trains_the_cap() -> None:
    assert plan_epochs(LEFT, 3, epoch_s=10.0, score_s=20.0, cap=28, minimum=12) == (28, "cap")
    assert plan_epochs(LEFT, 1, epoch_s=10.0, score_s=20.0, cap=28, minimum=12) == (28, "cap")


@pytest.mark.parametrize("left", [60.0, 0.0, -300.0])  # a minute left; nothing; the search overran
def test_a_tiny_remaining_budget_trains_the_fewest_epochs_and_says_it_does_not_fit(left: float) -> None:
    assert plan_epochs(left, 3, **SLOW, cap=28, minimum=12) == (12, "over")


def test_plan_epochs_refuses_what_cannot_be_planned() -> None:
    for kwargs in ({"epoch_s": 0.0}, {"seeds": 0}, {"minimum": 30}, {"minimum": 0}):
        args = {"left_s": LEFT, "seeds": 3, "epoch_s": 30.0, "score_s": 1.0, "cap": 28, "minimum": 12}
        args |= kwargs
        with pytest.raises(ValueError, match="plan_epochs"):
            plan_epochs(**args)


def test_without_a_retrain_or_a_budget_the_search_keeps_it_all(tmp_path: Path) -> None:
    assert split_budget(None, 0.55, 3) is None  # no budget: the retrain trains retrain_epochs, as before
    assert split_budget(6000.0, 0.55, None) is None  # no --retrain: the budget is the search's alone
    assert read_budget(tmp_path) is None
    add_spent(tmp_path, 12.0)  # nothing to count against
    assert not (tmp_path / "budget.json").exists()


def test_the_cpu_space_splits_100_minutes_into_a_45_minute_search() -> None:
    space = load_space("cpu")
    job = split_budget(space.search.time_budget_s, space.search.retrain_share, 3)
    assert job.total_s == 100 * 60 and job.search_s == pytest.approx(45 * 60)
    assert space.search.retrain_epochs == 45 > space.max_epochs()


def test_the_budget_record_reads_back_and_counts_every_command(tmp_path: Path) -> None:
    job = split_budget(1000.0, 0.6, 2)
    write_budget(tmp_path, job)
    add_spent(tmp_path, 300.0)
    add_spent(tmp_path, 50.0)  # a resume adds its own time
    back = read_budget(tmp_path)
    assert back == JobBudget(1000.0, 0.6, 2, spent_s=350.0) and back.left_s == 650.0
    assert json.loads((tmp_path / "budget.json").read_text())["search_s"] == pytest.approx(400.0)
    (tmp_path / "budget.json").write_text("{not json")
    with pytest.raises(Exception, match="budget.json: unreadable"):
        read_budget(tmp_path)


# -- the key -------------------------------------------------------------------------------------------------


def test_retrain_share_defaults_to_the_cpu_split_and_is_saved_with_the_space() -> None:
    space = parse_space({"model": {"arch": "cnn"}})
    assert space.search.retrain_share == 0.55
    written = parse_space({"model": {"arch": "cnn"}, "search": {"retrain_share": 0.3}})
    assert written.to_dict()["search"]["retrain_share"] == 0.3
    assert parse_space(written.to_dict()).search.retrain_share == 0.3


@pytest.mark.parametrize("value", [0, 1, 1.5, -0.2, "half", True, None, math.nan, math.inf, [0.5]])
def test_a_bad_retrain_share_is_one_line_naming_the_key(value) -> None:
    with pytest.raises(ConfigError, match=r"^search.retrain_share: must be a number in \(0, 1\)") as e:
        parse_space({"model": {"arch": "cnn"}, "search": {"retrain_share": value}})
    assert "\n" not in str(e.value)
    space = parse_space({"model": {"arch": "cnn"}})
    space.search.retrain_share = value  # as an override would set it: checked again
    with pytest.raises(ConfigError, match="^search.retrain_share: "):
        check_search(space.search)


# -- what the terminal says ----------------------------------------------------------------------------------


def _plan(**kwargs) -> RetrainPlan:
    figures = dict(seeds=3, epochs=17, why="fits", cap=28, minimum=12, left_s=LEFT, **SLOW)
    return RetrainPlan(**(figures | {"trial_id": "ab_00003", "measured_epochs": 12} | kwargs))


def test_the_plan_says_how_the_budget_was_split_and_why_these_epochs() -> None:
    job = JobBudget(6000.0, 0.55, 3, spent_s=2712.0)
    text = "\n".join(_plan(left_s=job.left_s).lines(job))
    assert "time budget 1:40:00 for the search and the retrain (search.retrain_share 0.55)" in text
    assert "the search had 0:45:00 and took 0:45:12, 0:54:48 left for the retrain" in text
    assert "retrain: 3 seeds x 17 epochs, about 0:49:54: 55.0 s per epoch" in text
    assert "median of 12 epochs of trial ab_00003, the best config" in text
    assert "63 s to score each seed, x1.1 margin" in text
    assert "CPU" not in text and len(text.splitlines()) == 2


def test_the_plan_says_when_the_cap_binds_or_even_the_fewest_epochs_overrun() -> None:
    job = JobBudget(6000.0, 0.55, 3, spent_s=2700.0)
    capped = "\n".join(_plan(epochs=28, why="cap", epoch_s=10.0).lines(job))
    assert "trains its most, 28 epochs (search.retrain_epochs" in capped and "before the budget" in capped
    short = JobBudget(6000.0, 0.55, 3, spent_s=5900.0)
    over = "\n".join(_plan(epochs=12, why="over", left_s=100.0).lines(short))
    assert "even 12 epochs (the config's own train.epochs, the fewest a retrain trains)" in over
    assert "need about 0:39:46 with 3 seeds, more than is left: the job will end about 0:38:06 after" in over


def test_the_plan_says_when_it_was_measured_on_a_small_cpu_share() -> None:
    job = JobBudget(6000.0, 0.55, 3, spent_s=2700.0)
    text = "\n".join(_plan(cpu_share=0.2).lines(job))
    assert "the search's trials got ~20% of the CPU while it measured these epochs" in text
    assert "CPU" not in "\n".join(_plan(cpu_share=0.95).lines(job))


def test_the_last_line_says_what_the_job_took_of_its_budget() -> None:
    job = JobBudget(6000.0, 0.55, 3, spent_s=2712.0, plan=_plan().to_dict(), retrain_s=2990.0)
    line = job_summary(job)
    assert line.startswith("the job took 1:35:02 of its 1:40:00 budget (within): the search 0:45:12")
    assert "the retrain 0:49:50 (3 x 17 epochs, planned about 0:49:54)" in line
    job.retrain_s = 3600.0
    assert "(0:05:12 over)" in job_summary(job)


# -- the search leaves the retrain its fewest epochs -----------------------------------------------

# The 2026-12-02 job on a 2-core AMD EPYC without AMX: the best config's epochs took 83.7 s, scoring a seed
# 138 s; 3 seeds x 12 epochs needed 1:02:50 with the margin, 8 minutes more than the 55 left after 45.
NO_AMX = {"epoch_s": 83.7, "score_s": 138.0}
TRIAL_CONFIG = {"model": {"arch": "cnn", "kernels": [8]}, "train": {"epochs": 12}}


def _reserve(tmp_path: Path, monkeypatch, cap: int | None = 28) -> RetrainReserve:
    import fer_tune.search.retrain_reserve as reserve

    monkeypatch.setattr(reserve, "scoring_seconds", lambda cfg, images, seeds, **kw: NO_AMX["score_s"])
    job = JobBudget(6000.0, 0.55, 3)
    write_budget(tmp_path, job)
    faces = {"Training": 28_707, "PublicTest": 3_589}
    return RetrainReserve(tmp_path, 3, job.total_s - job.search_s, faces, cap, "val_acc", "max")


def _report(reserve: RetrainReserve, tid: str, val_acc: float, seconds: float, epochs: int = 12) -> None:
    trial = SimpleNamespace(trial_id=tid, config=TRIAL_CONFIG | {"train": {"epochs": epochs}})
    reserve.on_trial_result(0, [trial], trial, {"val_acc": val_acc, "time_this_iter_s": seconds})


def test_the_reserve_is_the_best_trials_fewest_epochs_and_scoring(tmp_path: Path, monkeypatch) -> None:
    reserve = _reserve(tmp_path, monkeypatch)
    assert reserve.needed_s() == 0 and reserve.cut_s() == 0  # nothing measured: the search keeps its budget
    for seconds, acc in [(90.0, 0.40), (83.7, 0.50), (80.0, 0.55)]:
        _report(reserve, "a", acc, seconds)
    needed = MARGIN * 3 * (12 * 83.7 + 138.0)  # the median of its epochs
    assert reserve.needed_s() == pytest.approx(needed) and needed == pytest.approx(3769.9, abs=0.1)
    assert reserve.cut_s() == pytest.approx(needed + END_S - 3300.0)  # beyond the retrain's 55 minutes
    _report(reserve, "b", 0.45, 10.0)  # a worse trial changes nothing
    assert reserve.needed_s() == pytest.approx(needed)
    _report(reserve, "b", 0.60, 10.0, epochs=6)  # a better one, fast: its 6 epochs fit the share
    assert reserve.needed_s() == pytest.approx(MARGIN * 3 * (6 * 10.0 + 138.0)) and reserve.cut_s() == 0


def test_the_search_ends_when_what_it_has_left_is_the_retrains(tmp_path: Path, monkeypatch, capsys) -> None:
    reserve = _reserve(tmp_path, monkeypatch)
    _report(reserve, "a", 0.6, NO_AMX["epoch_s"])
    stopper = BudgetStopper(2700.0, reserve)
    stopper._budget = reserve.cut_s() + 60  # a minute more than the retrain needs from the search's budget
    assert not stopper.stop_all() and not stopper.fired
    stopper._budget = reserve.cut_s() - 1
    assert stopper.stop_all() and stopper.fired
    err = capsys.readouterr().err
    assert "fer-tune: the search ends 0:08:34 before its own budget: the retrain of its best config" in err
    assert (
        "needs at least 1:02:50 (3 x its fewest epochs and the scoring, x1.1), more than the 0:55:00" in err
    )
    job = read_budget(tmp_path)
    assert job.cut_s == pytest.approx(reserve.cut_s() - 1) and job.reserve_s == pytest.approx(
        reserve.needed_s()
    )
    job.spent_s = 2700.0 - job.cut_s
    text = "\n".join(_plan(left_s=job.left_s).lines(job))
    assert "the search had 0:45:00 and took 0:36:26 (ended 0:08:34 early: the retrain's fewest epochs" in text
    plain = BudgetStopper(2700.0)  # without a retrain to leave time for: Ray's TimeoutStopper
    plain._budget = 1.0
    assert not plain.stop_all()


# -- reading the search's figures ----------------------------------------------------------------------------


@pytest.fixture
def smoke_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(SMOKE, tmp_path / "smoke-cpu"))


def test_the_epoch_time_is_the_best_trials_median(smoke_copy: Path) -> None:
    trial_id, epoch_s, n, share = measured_epoch(smoke_copy)
    assert trial_id == "5e563191" and n == 5  # best_config.yaml's trial, every epoch it ran
    lines = (smoke_copy / "trial_5e563191" / "result.json").read_text().splitlines()
    times = [json.loads(line)["time_this_iter_s"] for line in lines]
    assert epoch_s == pytest.approx(sorted(times)[2])
    assert share is None  # searched before trials reported their CPU share


def test_the_plan_of_a_finished_search(smoke_copy: Path, tiny_data, one_thread) -> None:
    job = JobBudget(600.0, 0.5, 2, spent_s=310.0)
    plan = plan_retrain(smoke_copy, job, 2, tiny_data, cap=40, device="cpu")
    assert plan.minimum == 5 and plan.cap == 40  # the config's own epochs; the space's retrain_epochs
    assert plan.left_s == 290.0 and 0 < plan.score_s < 60
    assert plan.epochs == plan_epochs(290.0, 2, plan.epoch_s, plan.score_s, 40, 5)[0]
    assert RetrainPlan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan


def test_scoring_counts_every_view_the_retrain_scores(tiny_data, monkeypatch) -> None:
    import fer_tune.search.job_budget as jb
    from fer_tune.training import RunConfig

    ticks = iter([0.0, 1.0])  # one second for the probe's PROBE_IMAGES faces
    monkeypatch.setattr(jb.time, "perf_counter", lambda: next(ticks))
    cfg = RunConfig.from_dict(TRIAL_CONFIG)
    sizes = tiny_data.sizes()
    images, held_out = sum(sizes.values()), sum(n for s, n in sizes.items() if s != "Training")
    assert images == len(tiny_data) and held_out == int((tiny_data.usage != "Training").sum()) > 0
    per_face = 1.0 / jb.PROBE_IMAGES
    faces = {"Training": 700, "PublicTest": 300}  # 1000 faces, 300 held out
    # 2+ seeds: evaluate_dir (1 view), the ensemble's none and flip (3) of every face, ten-crop of held-out
    want = (4 * 1000 + 10 * 300) * per_face + jb.SCORE_OVERHEAD_S
    assert scoring_seconds(cfg, faces, 3, "cpu") == pytest.approx(want)
    ticks = iter([0.0, 1.0])
    assert scoring_seconds(cfg, faces, 1, "cpu") == pytest.approx(
        1000 * per_face + jb.SCORE_OVERHEAD_S
    )  # one seed: evaluate_dir's view only


# -- the CPU share -------------------------------------------------------------------------------------------


def _threads(folder: Path, **threads: tuple[int, int]) -> None:
    for tid, (ran, waited) in threads.items():
        (folder / tid).mkdir(parents=True, exist_ok=True)
        (folder / tid / "schedstat").write_text(f"{ran} {waited} 7\n")


def test_the_cpu_share_is_what_the_threads_ran_of_what_they_wanted(tmp_path: Path) -> None:
    _threads(tmp_path, t1=(100, 0), t2=(100, 0))
    share = CpuShare(tmp_path)
    _threads(tmp_path, t1=(400, 100), t2=(160, 340))  # +300 ran +100 waited; +60 ran +340 waited
    assert share.since_last() == pytest.approx(360 / 800)
    shutil.rmtree(tmp_path / "t2")  # a thread that ended; one that started counts from zero
    _threads(tmp_path, t1=(500, 100), t3=(100, 0))
    assert share.since_last() == pytest.approx(1.0)
    assert share.since_last() is None  # nothing ran since
    assert CpuShare(tmp_path / "missing").since_last() is None  # not Linux: no figure


def test_this_process_gets_a_share() -> None:
    share = CpuShare()
    sum(i * i for i in range(200_000))
    got = share.since_last()
    assert got is None or 0 < got <= 1  # None where /proc has no schedstat


def test_the_share_line_speaks_only_below_the_threshold() -> None:
    assert typical_share([0.2, None, math.nan, 0.4]) == pytest.approx(0.3)
    assert typical_share([0.9, 0.2, 0.4]) == 0.4
    assert typical_share([None]) is None
    assert share_line(None) is None and share_line(SMALL_SHARE) is None
    assert share_line(0.234) == (
        "trials got ~23% of the CPU: another process was busy; the search tried fewer configs"
    )


def _trial(tid: str, status: str, share: float | None) -> SimpleNamespace:
    result = {"epoch": 2, "val_acc": 0.5} | ({} if share is None else {"cpu_share": share})
    config = {"model": {"arch": "cnn"}, "train": {"epochs": 4}}
    return SimpleNamespace(trial_id=tid, status=status, config=config, last_result=result, metric_analysis={})


def test_the_live_view_says_when_running_trials_get_little_cpu() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=150)
    view = LiveView(Path("results/x"), "val_acc", "max", console=console)
    busy = [_trial("a_1", "RUNNING", 0.15), _trial("a_2", "RUNNING", 0.25), _trial("a_0", "TERMINATED", 1.0)]
    assert view.cpu_share(busy) == pytest.approx(0.2)  # the running ones only
    console.print(view.render(busy))
    assert "trials got ~20% of the CPU: another process was busy" in console.file.getvalue()
    quiet = [_trial("a_1", "RUNNING", 0.97), _trial("a_2", "RUNNING", None)]
    console.file.truncate(0)
    console.print(view.render(quiet))
    assert "CPU" not in console.file.getvalue()


def test_the_plain_lines_say_it_once() -> None:
    out = io.StringIO()
    view = LiveView(Path("results/x"), "val_acc", "max", console=Console(file=out, force_terminal=False))
    busy = [_trial("a_1", "RUNNING", 0.3)]
    for _ in range(3):
        view.update(busy, done=False)
    assert out.getvalue().count("trials got ~30% of the CPU") == 1


# -- Ray -----------------------------------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.slow
def test_trials_run_at_the_commands_niceness() -> None:
    """fer-tune starts Ray with its workers as nice as itself (Ray's default is 15 steps nicer)."""
    code = (
        "import os, ray\n"
        "from fer_tune.search.cluster import ray_session\n"
        "with ray_session(None, 1, 0) as cluster:\n"
        "    print(ray.get(ray.remote(lambda: os.nice(0)).remote()), os.nice(0))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "RAY_worker_niceness"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    worker, driver = done.stdout.split()[-2:]
    assert worker == driver, done.stdout + done.stderr


def test_a_search_that_ended_before_any_epoch_says_why_there_is_nothing_to_retrain(tmp_path) -> None:
    from fer_tune.search import retrain_best

    # a budget that ran out before the first report: no best_config.yaml, and nothing written to final/
    with pytest.raises(FerTuneError, match="no trial reported an epoch") as err:
        retrain_best(tmp_path, seeds=3)
    assert f"fer-tune --resume {tmp_path} --retrain 3" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "final").exists()


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_and_its_retrain_share_one_budget(ray_cluster, data_csv, tmp_path, capsys, monkeypatch):
    from test_report import TINY_SPACE

    from fer_tune.cli import main

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    # 3-epoch trials; the retrain may train up to 60 epochs, as many as fit half of 40 s
    text = TINY_SPACE.replace("search:\n", "search:\n  retrain_epochs: 60\n  retrain_share: 0.5\n")
    (tmp_path / "tiny.yaml").write_text(text)
    argv = ["--space", str(tmp_path / "tiny.yaml"), "--data", str(data_csv), "--gpus", "0"]
    argv += ["--results", str(tmp_path / "results"), "--name", "job", "--retrain", "1", "--time-budget", "40"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    folder = tmp_path / "results" / "job"
    job = read_budget(folder)
    assert job.total_s == 40 and job.seeds == 1 and job.spent_s > 0 and job.retrain_s > 0
    assert load_space(folder / "space.yaml").search.time_budget_s == pytest.approx(20.0)  # its share
    plan = RetrainPlan.from_dict(job.plan)
    assert plan.minimum == 3 and plan.cap == 60 and plan.epoch_s > 0 and plan.why in ("fits", "cap", "over")
    expected = plan_epochs(plan.left_s, 1, plan.epoch_s, plan.score_s, 60, 3)
    assert (plan.epochs, plan.why) == expected
    metrics = json.loads((folder / "final" / "metrics.json").read_text())
    assert metrics["config"]["train"]["epochs"] == plan.epochs  # the retrain trained the planned epochs
    # every epoch of every trial says what share of the CPU it got (Linux: the kernel's schedstat)
    results = [line for p in folder.glob("trial_*/result.json") for line in p.read_text().splitlines()]
    shares = [json.loads(line).get("cpu_share") for line in results]
    if Path("/proc/self/task").is_dir():
        assert shares and all(0 < s <= 1 for s in shares), shares
    assert "fer-tune: time budget 0:00:40 for the search and the retrain of 1 seed:" in out
    assert f"retrain: 1 seed x {plan.epochs} epochs" in out and "fer-tune: the job took" in out


@pytest.mark.ray
@pytest.mark.slow
def test_a_search_ends_early_to_leave_the_retrain_its_fewest_epochs(
    ray_cluster, data_csv, tmp_path, capsys, monkeypatch
):
    from test_report import TINY_SPACE

    from fer_tune.cli import main

    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "0")
    # 1 s of 50 kept for the retrain: 3 seeds x 3 epochs and their scoring cannot fit it, so the search (more
    # trials than its 49 s can run) ends as early as the best trial's retrain needs
    text = TINY_SPACE.replace("search:\n", "search:\n  retrain_share: 0.02\n").replace(
        "num_samples: 4", "num_samples: 1000"
    )
    (tmp_path / "tiny.yaml").write_text(text)
    argv = ["--space", str(tmp_path / "tiny.yaml"), "--data", str(data_csv), "--gpus", "0"]
    argv += ["--results", str(tmp_path / "results"), "--name", "job", "--retrain", "3", "--time-budget", "50"]
    assert main(argv) == 0
    out, err = capsys.readouterr()
    job = read_budget(tmp_path / "results" / "job")
    assert (
        job.cut_s is not None and 0 <= job.cut_s < job.search_s and job.reserve_s > job.total_s - job.search_s
    )
    assert "before its own budget: the retrain of its best config needs at least" in err
    assert f"(ended {clock(job.cut_s)} early: the retrain's fewest epochs needed more than its share)" in out
    assert "interrupted" not in out  # an early end is the budget's, not a stop
    plan = RetrainPlan.from_dict(job.plan)
    assert plan.seeds == 3 and plan.epochs >= plan.minimum == 3 and job.retrain_s > 0
