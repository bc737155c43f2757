"""Hyperparameter search on Ray Tune and Optuna: spaces, their conversion, the runner and its trainable,
the searcher, sampler and stoppers, the search folder, recovery, packing, the progress view (and the CPU share
trials got), wandb, one time budget for a search and its retrain, extending a finished search, and starting
one from the trials of earlier searches (a warm start)."""

from fer_tune.search.budget_stopper import BudgetStopper
from fer_tune.search.cpu_share import CpuShare
from fer_tune.search.extend import extend_search
from fer_tune.search.final import retrain_best
from fer_tune.search.folder import SearchFolder
from fer_tune.search.job_budget import JobBudget, RetrainPlan, plan_epochs
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
from fer_tune.search.sampler import InSpaceSampler, SamplerChoice, choose_sampler
from fer_tune.search.searcher import BestEpochOptunaSearch
from fer_tune.search.space import Dist, Space, bundled_names, load_space, parse_duration, parse_space
from fer_tune.search.state import Phase, SearchState
from fer_tune.search.stop_log import StopLog
from fer_tune.search.stuck_stopper import StuckStopper
from fer_tune.search.trainable import fer_trial
from fer_tune.search.warm_start import WarmStart, read_warm_starts

__all__ = [
    "BestEpochOptunaSearch",
    "BudgetStopper",
    "bundled_names",
    "CpuShare",
    "Dist",
    "export_config",
    "extend_search",
    "fer_trial",
    "InSpaceSampler",
    "SamplerChoice",
    "choose_sampler",
    "JobBudget",
    "load_results",
    "load_space",
    "Outcome",
    "parse_duration",
    "parse_space",
    "Phase",
    "plan_epochs",
    "resume_search",
    "retrain_best",
    "RetrainPlan",
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
    "WarmStart",
    "read_warm_starts",
    "write_results",
]
