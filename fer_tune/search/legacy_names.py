"""Where names pickled by earlier fer-tune versions live now: old searches resume, extend and report.

Ray pickles fer-tune objects into a search folder (`tuner.pkl`, `searcher-state-*.pkl`): the searcher, the
sampler, the progress reporter, the trial-folder namer. A pickle names each object by module and attribute,
so a search saved before fer-tune moved into subpackages names `fer_tune.hooks.BestEpochOptunaSearch`.
`install()` makes each such old name resolve to the object that holds the same code now; it is called before
Ray unpickles a search's state. This is the only place that knows the old names.
"""

from __future__ import annotations

import importlib
import sys
import types

# old module -> {old attribute: "new module:new attribute"}, read off the committed searches' pickles.
MOVED: dict[str, dict[str, str]] = {
    "fer_tune.folder": {"_reopen": "fer_tune.search.study:_reopen"},
    "fer_tune.hooks": {
        "BestEpochOptunaSearch": "fer_tune.search.searcher:BestEpochOptunaSearch",
        "InSpaceSampler": "fer_tune.search.sampler:InSpaceSampler",
        "BudgetStopper": "fer_tune.search.budget_stopper:BudgetStopper",
        "StuckStopper": "fer_tune.search.stuck_stopper:StuckStopper",
        "StopLog": "fer_tune.search.stop_log:StopLog",
    },
    "fer_tune.live": {"LiveReporter": "fer_tune.search.progress:LiveReporter"},
    "fer_tune.search": {"_trial_dirname": "fer_tune.search.trainable:trial_dirname"},
    "fer_tune.spaces": {
        "DefineByRun": "fer_tune.search.conversion:DefineByRun",
        "Dist": "fer_tune.search.dist:Dist",
    },
    "fer_tune.translate": {"DefineByRun": "fer_tune.search.conversion:DefineByRun"},
    "fer_tune.tracking": {"WandbRuns": "fer_tune.search.wandb_runs:WandbRuns"},
}


def resolve(target: str) -> object:
    """The object a `"module:attribute"` target names.

    Args:
        target: `"module:attribute"`, as in `MOVED`.

    Returns:
        The attribute, its module imported.
    """
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def install() -> None:
    """Make every old name in `MOVED` importable, as pickle imports it (module, then attribute).

    An old module that is now a package (`fer_tune.search`) gets the old attribute; the others are small
    stand-in modules in `sys.modules`. Idempotent.
    """
    for old, names in MOVED.items():
        module = sys.modules.get(old)
        if module is None:
            try:
                module = importlib.import_module(old)  # a package of the same name (fer_tune.search)
            except ImportError:
                module = sys.modules[old] = types.ModuleType(old, f"moved: see {__name__}")
        for attr, target in names.items():
            if not hasattr(module, attr):
                setattr(module, attr, resolve(target))
