"""The end of a search: its best config retrained with N seeds into `<folder>/final`, as
`fer-tune retrain`."""

from __future__ import annotations

from pathlib import Path

from fer_tune.search.folder import SearchFolder
from fer_tune.training import retrain


def retrain_best(folder: str | Path, seeds: int, device: str | None = None) -> Path:
    """Retrain a finished search's `best_config.yaml` with `seeds` seeds on the data the search used.

    Each seed trains for the space's `search.retrain_epochs` (or the config's own epochs) on Training, and
    each seed and their ensemble are scored. Run again after a crash, it goes on where the retrain stopped.

    Args:
        folder: the search folder (a remote search's local mirror).
        seeds: how many seeds to train (`--retrain N`).
        device: `cpu`, `cuda`, or None for cuda when available.

    Returns:
        The folder the seeds were written to, `<folder>/final`.
    """
    search = SearchFolder(folder)
    data = search.read_state().data  # the data the search used
    epochs = search.read_space().search.retrain_epochs  # None: the best config's own
    out = Path(folder) / "final"
    print(f"retraining the best config of {folder} with {seeds} seeds -> {out}")
    with search.lock():  # no resume or extend rewrites best_config.yaml while its seeds train
        retrain(
            Path(folder) / "best_config.yaml",
            data=data,
            out_dir=out,
            epochs=epochs,
            seeds=seeds,
            device=device,
            resume=True,  # run again after a crash, it goes on where the retrain stopped
        )
    return out
