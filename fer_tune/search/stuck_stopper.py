"""`StuckStopper`: Ray's `TrialPlateauStopper` for a trial that collapsed to predicting one class.

ASHA lets the first trial to reach each rung through, so one such trial could otherwise spend a CPU search's
budget."""

from __future__ import annotations

from ray.tune.stopper import TrialPlateauStopper

from fer_tune.search.stop_log import STUCK, record_ids


class StuckStopper(TrialPlateauStopper):
    """Stops a trial whose val_acc stayed flat (std < 0.01) for `epochs` epochs at or below `chance`.

    Args:
        epochs: how many epochs val_acc must stay flat (also the grace period before any stop).
        chance: the val_acc at or below which a flat trial is stuck: the majority class's share plus 5
            points, the accuracy of a model that answers one class.
    """

    def __init__(self, epochs: int, chance: float) -> None:
        # Ray's threshold is one the metric must have *reached* to be stopped: for "at or below chance" it is
        # given as a minimised one (a val_acc above `chance` is never stopped).
        super().__init__(
            "val_acc", std=0.01, num_results=epochs, grace_period=epochs, metric_threshold=chance, mode="min"
        )

    def __call__(self, trial_id: str, result: dict) -> bool:
        stop = super().__call__(trial_id, result)
        if stop:
            print(f"fer-tune: trial {trial_id}: val_acc stuck at chance level; stopping it")
            record_ids([trial_id], STUCK, None)
        return stop
