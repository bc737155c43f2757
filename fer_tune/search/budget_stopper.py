"""`BudgetStopper`: Ray's `TimeoutStopper` (it stops running trials too), remembering that it fired."""

from __future__ import annotations

from ray.tune.stopper import TimeoutStopper


class BudgetStopper(TimeoutStopper):
    """Ray's TimeoutStopper (stops every trial when the budget is spent) that remembers having fired."""

    fired: bool = False

    def stop_all(self) -> bool:
        """Whether the time budget is spent (Ray then stops every trial); remembered in `fired`.

        Returns:
            True once the budget is spent.
        """
        self.fired = super().stop_all() or self.fired
        return self.fired
