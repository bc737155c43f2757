"""fer-tune: hyperparameter search for facial-expression recognition on FER2013, built on Ray Tune.

The package is layered; each subpackage imports only those below it (checked by `lint-imports`):

- `fer_tune.cli`: the `fer-tune` command line (parsers, then one library call per command);
- `fer_tune.inference`: face detection, prediction on photos and videos, ONNX and TorchScript export;
- `fer_tune.analysis`: reports of finished searches;
- `fer_tune.search`: search spaces and the Ray Tune / Optuna search that runs them;
- `fer_tune.training`: training, evaluating, ensembling and distilling one run config (no Ray);
- `fer_tune.models`: model families registered by name;
- `fer_tune.data`: reading and writing FER2013;
- `fer_tune.base`: errors, whole-file writes, typed config fields, local and S3 storage.
"""

__version__ = "0.1.0"
