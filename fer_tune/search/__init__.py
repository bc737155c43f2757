"""Hyperparameter search on Ray Tune and Optuna: spaces, their conversion, the runner and its trainable,
the searcher, sampler and stoppers, the search folder, recovery, packing, the progress view, wandb and
extending a finished search."""

from fer_tune.search.budget_stopper import BudgetStopper
from fer_tune.search.extend import extend_search
from fer_tune.search.final import retrain_best
from fer_tune.search.folder import SearchFolder
from fer_tune.search.resources import SearchResources
from fer_tune.search.results import (
    Selection,
    export_config,
    load_results,
    selection,
    trial_config,
    write_results,
)
from fer_tune.search.runner import Outcome, resume_search, run_search
from fer_tune.search.sampler import InSpaceSampler
from fer_tune.search.searcher import BestEpochOptunaSearch
from fer_tune.search.space import Dist, Space, bundled_names, load_space, parse_duration, parse_space
from fer_tune.search.state import Phase, SearchState
from fer_tune.search.stop_log import StopLog
from fer_tune.search.stuck_stopper import StuckStopper
from fer_tune.search.trainable import fer_trial

__all__ = [
    "BestEpochOptunaSearch",
    "BudgetStopper",
    "bundled_names",
    "Dist",
    "export_config",
    "extend_search",
    "fer_trial",
    "InSpaceSampler",
    "load_results",
    "load_space",
    "Outcome",
    "parse_duration",
    "parse_space",
    "Phase",
    "resume_search",
    "retrain_best",
    "run_search",
    "SearchFolder",
    "SearchResources",
    "SearchState",
    "Selection",
    "selection",
    "Space",
    "StopLog",
    "StuckStopper",
    "trial_config",
    "write_results",
]
