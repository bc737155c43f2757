"""One sampled value of a search space: its distribution (`choice`, `loguniform`, ...), arguments and key path."""

from __future__ import annotations

from dataclasses import dataclass

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform", "qloguniform")

PRIMITIVE = (type(None), bool, int, float, str)


@dataclass(frozen=True)
class Dist:
    """One sampled value: `kind` from DISTRIBUTIONS, its `args`, and the dotted key path it sits at."""

    kind: str
    args: tuple
    path: str

    @property
    def name(self) -> str:
        """The Optuna parameter name: the key path in Ray's `/` spelling (`model/families/cnn/kernels/0`)."""
        return self.path.replace(".", "/")

    def to_yaml(self) -> dict[str, list]:
        return {self.kind: list(self.args)}
