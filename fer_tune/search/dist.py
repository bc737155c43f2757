"""One sampled value of a search space: its distribution (`choice`, `loguniform`, ...), arguments and key
path."""

from __future__ import annotations

from dataclasses import dataclass

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform", "qloguniform")

PRIMITIVE = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Dist:
    """One sampled value: `kind` from DISTRIBUTIONS, its `args`, and the dotted key path it sits at.

    Args:
        kind: the distribution, one of `DISTRIBUTIONS`.
        args: its arguments as written in the space (`loguniform: [1e-4, 0.1]` -> `(1e-4, 0.1)`).
        path: the dotted key path (`model.families.cnn.kernels.0`).
    """

    kind: str
    args: tuple
    path: str

    @property
    def name(self) -> str:
        """The Optuna parameter name: the key path in Ray's `/` spelling (`model/families/cnn/kernels/0`)."""
        return self.path.replace(".", "/")

    def to_yaml(self) -> dict[str, list]:
        """The value as a space file spells it.

        Returns:
            `{kind: [args...]}`.
        """
        return {self.kind: list(self.args)}
