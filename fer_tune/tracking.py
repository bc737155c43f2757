"""wandb logging of a search: each trial owns its wandb run, logs every epoch to it and finishes it.

Ray's `WandbLoggerCallback` logs through an actor that finishes the runs after the trials end, and its files
are copied from Ray's staging folder into `results/` by a final sync that does not wait for it: runs were
left with only their 7-byte header. Here the trial's own process calls `wandb.init` (run id `<search>-<trial
id>`, `resume="allow"`: a trial resumed after an interrupt or a retry continues its run), logs each epoch
before reporting it to Ray (so an ASHA stop, which Ray delivers inside that report as `SystemExit`, comes
after the epoch is logged), and finishes the run whatever ends the trial. The run files are written straight
into the trial's folder in the search folder (`results/<name>/trial_<id>/wandb/`), not into Ray's staging.

No API key is looked up for `offline`: wandb needs none, and Ray's `_set_api_key` (which raises without one
unless `WANDB_MODE` is set in the environment) is not called.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fer_tune.errors import ConfigError

LogFn = Callable[[dict[str, Any]], None]
MODES = ("online", "offline", "disabled")


@dataclass(frozen=True)
class WandbTracking:
    """Where a search's trials log: project, mode (online | offline) and group (the search's name)."""

    project: str
    mode: str
    group: str

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> WandbTracking | None:
        """The tracking a search's state asks for (`wandb_project`, `wandb_mode`, `name`); None when off."""
        project = state.get("wandb_project")
        mode = {"dryrun": "offline", "run": "online"}.get(state.get("wandb_mode"), state.get("wandb_mode"))
        mode = mode or "online"
        if not project or mode == "disabled":
            return None
        if mode not in MODES:
            raise ConfigError(f"--wandb-mode: {mode!r}, expected one of {', '.join(MODES)}")
        return cls(project=project, mode=mode, group=state["name"])

    def check(self) -> None:
        """Fail before Ray starts when `online` has no API key (trials would each fail at `wandb.init`)."""
        if self.mode != "online":
            return
        import wandb

        if not wandb.login(prompt=False, verify=False):
            raise ConfigError(
                "--wandb-mode online: no wandb API key (run `wandb login` or set WANDB_API_KEY); "
                "--wandb-mode offline logs without one"
            )

    def run_id(self, trial_id: str) -> str:
        """`<search name>-<trial id>`: unique in the project, and the same when the trial is resumed."""
        return re.sub(r"[^\w.-]", "-", f"{self.group}-{trial_id}")[:128]


@contextmanager
def trial_run(tracking: WandbTracking | None, config: dict[str, Any]) -> Iterator[LogFn]:
    """Inside a Ray trial: yields `log(metrics)`, which logs one epoch at step `metrics["epoch"]`.

    The run is finished however the block ends: normally, by an exception (exit code 1), or by Ray stopping
    the trial (`SystemExit` raised in the trial's thread: exit code 0).
    """
    if tracking is None:
        yield lambda metrics: None
        return
    import ray.tune
    import wandb

    context = ray.tune.get_context()
    trial_id = context.get_trial_id()
    run = wandb.init(
        project=tracking.project,
        group=tracking.group,
        name=f"trial_{trial_id}",
        id=tracking.run_id(trial_id),
        resume="allow",
        reinit="finish_previous",  # a reused worker runs one trial after another
        mode=tracking.mode,  # explicit: wins over a WANDB_MODE the Ray workers inherited
        dir=str(_run_dir(context)),
        config={**config, "trial_id": trial_id, "search": tracking.group},
        settings=wandb.Settings(console="off", silent=True),  # Ray captures the trial's output already
    )
    exit_code = 0
    try:
        yield lambda metrics: run.log(_scalars(metrics), step=int(metrics["epoch"]))
    except SystemExit:  # Ray's way of stopping a trial (ASHA, time budget) from inside its report
        raise
    except BaseException:
        exit_code = 1
        raise
    finally:
        run.finish(exit_code=exit_code)


def _run_dir(context: Any) -> Path:
    """The trial's folder in the search folder when it is a local or mounted path (wandb's files then land
    there directly, with no sync to race); Ray's trial working folder otherwise."""
    import pyarrow.fs

    storage = context.get_storage()  # Ray DeveloperAPI: where Ray persists this trial
    if isinstance(storage.storage_filesystem, pyarrow.fs.LocalFileSystem):
        folder = Path(storage.trial_fs_path)
    else:
        folder = Path(context.get_trial_dir())
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _scalars(metrics: dict[str, Any]) -> dict[str, Any]:
    """The numbers of a report (strings such as the device name are kept out of the history)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
