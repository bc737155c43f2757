"""Hyperparameter importance of a search, by Optuna's PED-ANOVA over its finished trials."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from typing import Any

import optuna
import pandas as pd

from fer_tune.analysis.tables import hashable, missing, short_key
from fer_tune.search import Selection
from fer_tune.search.results import VAL_ACC

FINISHED = ("completed", "stopped by ASHA")  # trials whose best_val_acc is final
# Importance: PED-ANOVA compares where the top-quantile trials lie with where all trials lie; below ~8
# finished trials the top quantile holds 1-3 points and the ranking is noise, so we say so instead.
MIN_IMPORTANCE_TRIALS = 8
MIN_TOP_TRIALS = 5  # Optuna's docs: prefer >= 5 trials above the target quantile


def _distribution(
    values: Iterable[Any], declared: optuna.distributions.BaseDistribution | None = None
) -> optuna.distributions.BaseDistribution | None:
    """Numbers -> Int/Float over the observed range, on a log scale when the space declares one (`declared`:
    its Optuna distribution); choices and other values categorical."""
    vals = [hashable(v) for v in values if not missing(v)]
    if len(set(map(repr, vals))) < 2:
        return None  # constant: nothing to attribute
    numeric = not isinstance(declared, optuna.distributions.CategoricalDistribution)
    if numeric and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
        lo, hi = min(vals), max(vals)
        log = bool(getattr(declared, "log", False)) and lo > 0
        if all(float(v).is_integer() for v in vals):
            return optuna.distributions.IntDistribution(int(lo), int(hi), log=log)
        return optuna.distributions.FloatDistribution(float(lo), float(hi), log=log)
    return optuna.distributions.CategoricalDistribution(sorted(set(vals), key=repr))


def _cast(v: Any, dist: optuna.distributions.BaseDistribution) -> Any:
    if isinstance(dist, optuna.distributions.IntDistribution):
        return int(v)
    if isinstance(dist, optuna.distributions.FloatDistribution):
        return float(v)
    return hashable(v)


def param_importance(
    trials: pd.DataFrame, sel: Selection = VAL_ACC, declared: Mapping[str, Any] | None = None
) -> tuple[dict[str, float], dict[str, Any], str]:
    """Importance of each varied config key for reaching the top trials' value of the ranked metric.

    Uses the finished trials (completed or stopped by ASHA) with the best value each reached, so a trial
    ASHA stopped counts with what it reached before it was stopped. Optuna's PED-ANOVA evaluator is used
    because fANOVA needs scikit-learn (not a dependency) and PED-ANOVA handles conditional (per-family)
    parameters.

    Args:
        trials: the trials table of `load_results`.
        sel: what the trials are ranked by.
        declared: `group.key` -> the Optuna distribution the space samples it from (its log scale is used);
            None for none.

    Returns:
        (importances by `group.key`, the distributions used, a note for the report: "" when it worked).
    """
    done = trials[trials["stop_reason"].isin(FINISHED)].dropna(subset=[sel.column])
    if len(done) < MIN_IMPORTANCE_TRIALS:
        return {}, {}, f"needs at least {MIN_IMPORTANCE_TRIALS} finished trials, this search has {len(done)}"
    cols = [c for c in done.columns if c.startswith("config/")]
    declared = declared or {}
    dists = {
        short_key(c): d for c in cols if (d := _distribution(done[c], declared.get(short_key(c)))) is not None
    }
    if not dists:
        return {}, {}, "no config key varied between the finished trials"
    frozen = []
    for _, row in done.iterrows():
        present = {k: row[f"config/{k.replace('.', '/')}"] for k in dists}
        present = {k: v for k, v in present.items() if not missing(v)}
        frozen.append(
            optuna.trial.create_trial(
                params={k: _cast(v, dists[k]) for k, v in present.items()},
                distributions={k: dists[k] for k in present},
                value=float(row[sel.column]),
            )
        )
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.create_study(direction="maximize" if sel.mode == "max" else "minimize")
        study.add_trials(frozen)
        quantile = min(0.5, max(0.1, MIN_TOP_TRIALS / len(frozen)))
        evaluator = optuna.importance.PedAnovaImportanceEvaluator(target_quantile=quantile)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "few trials in a regime" warnings: the report states the counts
            imp = optuna.importance.get_param_importances(study, evaluator=evaluator)
    finally:
        optuna.logging.set_verbosity(verbosity)
    note = (
        f"PED-ANOVA over {len(frozen)} finished trials (each with its best {sel.metric}; ASHA-stopped ones "
        f"with what they reached): what sets the top {quantile:.0%} apart from all"
    )
    return dict(imp), dists, note
