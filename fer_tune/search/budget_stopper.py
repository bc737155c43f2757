"""`BudgetStopper`: Ray's `TimeoutStopper` (it stops running trials too), remembering that it fired, and
ending the search early when the retrain after it needs more than its share
(`fer_tune.search.retrain_reserve`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ray.tune.stopper import TimeoutStopper

if TYPE_CHECKING:
    from fer_tune.search.retrain_reserve import RetrainReserve


# What the BudgetStopper running in this process knows: whether it fired, and what it has left. On a resume
# Ray runs its own copy of the stopper, unpickled from the saved experiment state (with what was left of the
# budget), not the one the tuner and StopLog hold: a resumed search that ran out of its budget looked
# interrupted (exit 130, and so did every resume after), and its live view showed the whole budget as left.
_FIRED = False
_LEFT: float | None = None


def budget_fired() -> bool:
    """Whether a search's time budget ran out in this process since `forget_budget_fired`."""
    return _FIRED


def budget_left() -> float | None:
    """Seconds the running search's budget had left at its stopper's last check (Ray checks every loop of its
    controller); None before the first check or without a budget."""
    return _LEFT


def forget_budget_fired() -> None:
    """Before a search runs: no budget has run out, none is counting down."""
    global _FIRED, _LEFT
    _FIRED, _LEFT = False, None


class BudgetStopper(TimeoutStopper):
    """Ray's TimeoutStopper (stops every trial when the budget is spent) that remembers having fired.

    Args:
        timeout: the search's own budget, seconds.
        reserve: under a budget shared with the retrain, what the retrain needs at least: the search ends
            once what it has left is no more than the part of that beyond the retrain's share.
    """

    fired: bool = False
    reserve: RetrainReserve | None = None  # absent from a stopper pickled by an earlier fer-tune

    def __init__(self, timeout: float, reserve: RetrainReserve | None = None) -> None:
        super().__init__(timeout)
        self.reserve = reserve

    def stop_all(self) -> bool:
        """Whether the time budget is spent, or must be left to the retrain (Ray then stops every trial);
        remembered in `fired`.

        Returns:
            True once the budget is spent.
        """
        spent = super().stop_all()  # counts down self._budget, what the search has left
        if not (spent or self.fired) and self.reserve is not None and self._budget <= self.reserve.cut_s():
            self.reserve.end_search(max(0.0, self._budget))
            spent = True
        self.fired = spent or self.fired
        global _FIRED, _LEFT
        _FIRED, _LEFT = _FIRED or self.fired, max(0.0, self._budget)
        return self.fired
