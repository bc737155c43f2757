"""A trial that Ray restores from a damaged checkpoint ends with fer-tune's one-line error as its reason."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from conftest import make_fer

from fer_tune.search import fer_trial
from fer_tune.search.trainable import TrialResources

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

CONFIG = {
    "model": {"arch": "cnn", "kernels": [4], "head_width": 0},
    "train": {"epochs": 2, "batch_size": 16, "warmup_epochs": 0},
}


def test_a_trial_restored_from_a_truncated_checkpoint_fails_naming_it(ray_cluster, tmp_path: Path) -> None:
    from ray import tune

    data = make_fer({"Training": 4, "PublicTest": 2})

    def first_a_truncated_checkpoint(config: dict) -> None:
        if tune.get_checkpoint() is None:
            folder = Path(tempfile.mkdtemp())
            (folder / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut off mid-write")
            tune.report({"epoch": 0}, checkpoint=tune.Checkpoint.from_directory(str(folder)))
            raise RuntimeError("the node went away")  # Ray retries from the checkpoint above
        fer_trial(config, data, TrialResources(1, 0, None))

    grid = tune.Tuner(
        tune.with_resources(first_a_truncated_checkpoint, {"cpu": 1}),
        param_space=CONFIG,
        run_config=tune.RunConfig(
            name="truncated",
            storage_path=str(tmp_path),
            failure_config=tune.FailureConfig(max_failures=1),
        ),
    ).fit()
    error = (Path(grid[0].path) / "error.txt").read_text()
    assert "Failure # 2" in error  # the retry, from the truncated checkpoint
    last = [line for line in error.splitlines() if line.strip()][-1]  # what results.py shows
    assert last.startswith("fer_tune.base.errors.DataError: ") and last.endswith(
        "/checkpoint.pt: not a fer-tune checkpoint, truncated or corrupt "
        "(RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory)"
    ), last
