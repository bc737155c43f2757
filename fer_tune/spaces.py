"""Search spaces: a YAML run config whose values may be distributions, plus `search` and `resources` blocks.

A space file has the run-config groups (`model`, `train`, `augment`, `seed`); any value is either fixed or a
one-key mapping naming a distribution (`lr: {loguniform: [1e-3, 0.1]}`). `model.arch` may be a choice whose
families have their own sub-spaces under `model.families`. The parsed space translates to Ray Tune's search
space API (grid and random search, `BasicVariantGenerator`) and to an Optuna define-by-run function (TPE,
conditional families). Both are checked before Ray starts: several configs are drawn (every family, every
distribution at its low and its high end) and each must be a valid `RunConfig`. The format is documented in
`search_spaces/README.md`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from fer_tune.config import RunConfig
from fer_tune.errors import ConfigError, FerTuneError, check
from fer_tune.train import METRIC_MODES

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint", "quniform", "qloguniform")
GROUPS = ("model", "train", "augment", "seed")
TOP_KEYS = (*GROUPS, "search", "resources", "data")
ALGORITHMS = ("optuna", "random", "grid")
SCHEDULERS = ("asha", "none")
_PRIMITIVE = (type(None), bool, int, float, str)


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


@dataclass
class SearchSettings:
    """The `search` block: how many trials, which algorithm and scheduler, how long."""

    algorithm: str = "optuna"  # optuna (TPE) | random | grid
    num_samples: int = 0  # trials (grid: passes over the grid); default 20, grid: 1
    metric: str = "val_acc"  # a key of METRIC_MODES; trials are ranked by its best epoch
    mode: str | None = None  # max | min; default: the metric's direction in METRIC_MODES
    scheduler: str = "asha"  # asha | none
    max_t: int | None = None  # ASHA's last rung, in epochs (default: the largest train.epochs of the space)
    grace_period: int = 1  # epochs every trial runs before ASHA may stop it
    reduction_factor: int = 3  # ASHA keeps 1/reduction_factor of the trials at each rung
    time_budget_s: float | None = None  # stop the search after this many seconds
    seed: int = 0  # seeds Optuna's sampler or Ray's random search
    max_concurrent: int | None = None  # default: as many trials as the resources hold
    max_failures: int = 0  # retries of a failed trial


@dataclass
class Resources:
    """The `resources` block: what each trial reserves."""

    cpus_per_trial: float = 1.0  # also the torch threads of the trial (at least 1)
    # None: 1 when the search uses GPUs, else 0; "auto": measured per family (fer_tune.packing)
    gpus_per_trial: float | str | None = None
    gpu_shares: dict[str, float] | None = None  # per family, over gpus_per_trial ("auto" fills it)


@dataclass
class Space:
    """A parsed, validated search space."""

    name: str  # file stem, e.g. "resnet"
    source: str  # the file it was read from
    groups: dict[str, Any]  # run-config groups with Dist leaves; model may hold `families`
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: Resources = field(default_factory=Resources)
    data: str | None = None

    @property
    def families(self) -> dict[str, dict[str, Any]]:
        return self.groups.get("model", {}).get("families", {})

    def dists(self) -> list[Dist]:
        """Every distribution of the space, in file order."""
        return list(_leaves(self.groups))

    def varied_keys(self) -> list[str]:
        """Run-config keys a trial's config varies in, Ray style (`model/kernels`): the progress columns."""
        keys = ["model/arch"]
        for d in self.dists():
            parts = d.path.split(".")
            if parts[:2] == ["model", "families"]:
                parts = ["model", *parts[3:]]
            while parts[-1].isdigit():  # a per-layer width: show the whole list
                parts.pop()
            key = "/".join(parts)
            if key not in keys:
                keys.append(key)
        return keys

    def max_epochs(self) -> int:
        """The largest `train.epochs` any trial can have (ASHA's default max_t)."""
        epochs = self.groups.get("train", {}).get("epochs", 30)
        return int(max(_values(epochs)))

    def grid_size(self) -> int:
        """Configs in one pass over the grid (1 without grid values)."""

        def size(tree: Any) -> int:
            return math.prod(len(d.args) for d in _leaves(tree) if d.kind == "grid")

        shared = {k: v for k, v in self.groups.items() if k != "model"}
        model = {k: v for k, v in self.groups.get("model", {}).items() if k not in ("families", "arch")}
        arch = self.groups.get("model", {}).get("arch")
        archs = arch.args if isinstance(arch, Dist) and arch.kind == "grid" else [None]
        per_arch = sum(size(self.families.get(a, {})) if a else 1 for a in archs)
        return size(shared) * size(model) * per_arch

    def total_trials(self) -> int:
        """Trials the search runs when nothing stops it."""
        n = self.search.num_samples
        return n * self.grid_size() if self.search.algorithm == "grid" else n

    def to_dict(self) -> dict[str, Any]:
        """The resolved space (overrides and defaults applied) in the file format: written as `space.yaml`."""
        out: dict[str, Any] = {k: _to_yaml(v) for k, v in self.groups.items()}
        search = dataclasses.asdict(self.search)
        out["search"] = {
            "algorithm": search.pop("algorithm"),
            "num_samples": search.pop("num_samples"),
            "metric": search.pop("metric"),
            "mode": search.pop("mode"),
            "scheduler": {"type": search.pop("scheduler")}
            | {k: search.pop(k) for k in ("max_t", "grace_period", "reduction_factor")},
            "time_budget": search.pop("time_budget_s"),
            **search,
        }
        out["resources"] = {k: v for k, v in dataclasses.asdict(self.resources).items() if v is not None}
        if self.data:
            out["data"] = self.data
        return out

    # -- translations ---------------------------------------------------------------------------------------

    def param_space(self) -> dict[str, Any]:
        """The space in Ray Tune's search space API, for `BasicVariantGenerator` (random and grid search)."""
        from ray import tune

        def conv(node: Any) -> Any:
            if isinstance(node, Dist):
                return _ray_domain(node)
            if isinstance(node, dict):
                return {k: conv(v) for k, v in node.items()}
            if isinstance(node, list):
                return [conv(v) for v in node]
            return node

        space = {k: conv(v) for k, v in self.groups.items() if k != "model"}
        model = dict(self.groups.get("model", {}))
        families = model.pop("families", {})
        arch = model.get("arch")
        if families:
            # Conditional: one alternative per family; Ray resolves the domains nested in the chosen one.
            options = [conv({**model, **families.get(a, {}), "arch": a}) for a in arch.args]
            space["model"] = tune.grid_search(options) if arch.kind == "grid" else tune.choice(options)
        else:
            space["model"] = conv(model)
        return space

    def define_by_run(self) -> DefineByRun:
        """The space as an Optuna define-by-run function (for `OptunaSearch(space=...)`)."""
        return DefineByRun(self.groups)

    def sample(self, n: int = 3, seed: int = 0) -> list[dict[str, Any]]:
        """Draw configs with Optuna's random sampler: per family, all-low, all-high and `n` random ones."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        fn = self.define_by_run()
        arch = self.groups.get("model", {}).get("arch")
        archs = arch.args if isinstance(arch, Dist) else [None]
        configs = []
        for a in archs:
            fixed = {"model/arch": _encode(a)} if a is not None else {}
            for end in (0, -1):
                study.enqueue_trial({**{d.name: _corner(d, end) for d in self.dists()}, **fixed})
            for _ in range(n):
                study.enqueue_trial(fixed)
            configs += [fn(study.ask()) for _ in range(n + 2)]
        return configs


class DefineByRun:
    """Optuna define-by-run function over a parsed space; picklable, as OptunaSearch saves it with its state.

    Parameters are named by their key path (`train/lr`, `model/families/cnn/kernels/0`), so each family has
    its own parameters. It returns the complete run config: OptunaSearch merges that over the captured
    parameters and `unflatten_dict`s the result; as the returned group keys (`model`, `train`, ...) come
    after the `group/...` parameter names, the trial's config is exactly the run config.
    """

    def __init__(self, groups: dict[str, Any]):
        self.groups = groups

    def __call__(self, trial: Any) -> dict[str, Any]:
        def suggest(d: Dist) -> Any:
            return _suggest(trial, d)

        model = dict(self.groups.get("model", {}))
        families = model.pop("families", {})
        arch = _resolve(model.get("arch"), suggest)
        model = {**model, **families.get(arch, {}), "arch": arch} if families else model
        config = {k: _resolve(v, suggest) for k, v in self.groups.items() if k != "model"}
        config["model"] = _resolve(model, suggest)
        return config


# -- loading and checking ------------------------------------------------------------------------------------


def bundled_dir() -> Path:
    """The bundled spaces: `fer_tune/search_spaces/` in an installed wheel, `search_spaces/` in a checkout
    (also for an editable install, whose finder does not resolve that data-only package)."""
    here = Path(__file__).resolve().parent
    for folder in (here / "search_spaces", here.parent / "search_spaces"):
        if folder.is_dir():
            return folder
    return here / "search_spaces"


def bundled_names() -> list[str]:
    return sorted(p.stem for p in bundled_dir().glob("*.yaml"))


def resolve_path(name: str | Path) -> Path:
    """A path as given when it exists, else a bundled space (`resnet` or `resnet.yaml`)."""
    path = Path(name)
    if path.is_file():
        return path
    if path.parent == Path("."):
        stem = path.name.removesuffix(".yaml").removesuffix(".yml")
        bundled = bundled_dir() / f"{stem}.yaml"
        if bundled.is_file():
            return bundled
    raise ConfigError(f"{name}: no such search space file; bundled spaces: {', '.join(bundled_names())}")


def load_space(name: str | Path, **overrides: Any) -> Space:
    """Read, parse and check a space file; `overrides` are `search`/`resources` fields (CLI flags) or `data`.

    Raises ConfigError (one line: file, key path, problem) for any problem, before anything runs.
    """
    path = resolve_path(name)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(e).split())}") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read: {e.strerror}") from None
    try:
        return parse_space(raw, name=path.stem, source=str(path), **overrides)
    except FerTuneError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_space(raw: Any, *, name: str = "space", source: str = "", **overrides: Any) -> Space:
    """Parse and check a space mapping (see `load_space`); errors start with the key path."""
    check(isinstance(raw, Mapping), "space", f"expected a mapping of {', '.join(TOP_KEYS)}, got {raw!r}")
    for key in raw:
        check(key in TOP_KEYS, str(key), f"unknown key; known keys: {', '.join(TOP_KEYS)}")
    check("model" in raw, "model", "missing; a space needs at least `model: {arch: NAME}`")
    groups: dict[str, Any] = {}
    for g in GROUPS:
        if g not in raw:
            continue
        if g == "seed":
            groups[g] = _parse_value(raw[g], "seed")
            continue
        check(isinstance(raw[g], Mapping), g, f"expected a mapping, got {raw[g]!r}")
        groups[g] = {str(k): _parse_value(v, f"{g}.{k}") for k, v in raw[g].items() if k != "families"}
    _parse_families(raw["model"], groups["model"])
    search, resources = _parse_search(raw.get("search")), _parse_resources(raw.get("resources"))
    data = raw.get("data")
    check(data is None or isinstance(data, str), "data", f"expected a path, got {data!r}")
    for key, value in overrides.items():
        if value is None:
            continue
        if key == "data":
            data = str(value)
        elif hasattr(search, key):
            setattr(search, key, value)
        elif hasattr(resources, key):
            setattr(resources, key, value)
        else:
            raise ValueError(f"unknown override {key}")
    space = Space(name, source, groups, search, resources, data)
    _check_space(space)
    return space


def parse_duration(value: Any, key: str = "search.time_budget") -> float | None:
    """`90m`, `2h`, `3600s`, `1.5h`, a number of seconds, or null."""
    if value is None:
        return None
    if isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0:
        return float(value)
    m = re.fullmatch(r"\s*(\d+(?:\.\d*)?)\s*([smhd]?)\s*", str(value))
    check(
        m is not None and float(m.group(1)) > 0,
        key,
        f"expected a duration like 90m, 2h, 3600s; got {value!r}",
    )
    return float(m.group(1)) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[m.group(2)]


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _parse_value(value: Any, path: str) -> Any:
    """A fixed value, a list (whose items may be distributions), or a one-key distribution mapping."""
    if isinstance(value, list):
        return [_parse_value(v, f"{path}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    check(
        len(value) == 1 and next(iter(value)) in DISTRIBUTIONS,
        path,
        f"expected a value or one distribution ({', '.join(DISTRIBUTIONS)}), got {dict(value)!r}",
    )
    kind, args = next(iter(value.items()))
    check(isinstance(args, list), path, f"{kind}: expected a list, got {args!r}")
    if kind in ("choice", "grid"):
        check(len(args) > 0, path, f"{kind}: needs at least one value")
        for v in args:
            check(not isinstance(v, Mapping), path, f"{kind}: values must be fixed, got {v!r}")
        return Dist(kind, tuple(args), path)
    n = 3 if kind.startswith("q") else 2
    form = "[low, high, q]" if n == 3 else "[low, high]"
    check(len(args) == n and all(_is_number(a) for a in args), path, f"{kind}: expected {form}, got {args!r}")
    lo, hi = args[0], args[1]
    if kind == "randint":
        check(all(isinstance(a, int) for a in args), path, f"randint: expected integers, got {args!r}")
        check(lo <= hi, path, f"randint: low {lo} > high {hi}")
    else:
        check(lo < hi, path, f"{kind}: low {lo} must be < high {hi}")
    if "log" in kind:
        check(lo > 0, path, f"{kind}: low must be > 0, got {lo}")
    if n == 3:
        check(args[2] > 0, path, f"{kind}: q must be > 0, got {args[2]}")
    return Dist(kind, tuple(args), path)


def _parse_families(raw_model: Mapping, model: dict[str, Any]) -> None:
    families = raw_model.get("families")
    if families is None:
        return
    check(
        isinstance(families, Mapping) and families, "model.families", "expected a mapping arch -> sub-space"
    )
    arch = model.get("arch")
    check(
        isinstance(arch, Dist),
        "model.families",
        "needs model.arch to be a choice or grid of architectures",
    )
    from fer_tune.models import list_models

    known = list_models()
    parsed = {}
    for fam, sub in families.items():
        key = f"model.families.{fam}"
        check(fam in known, key, f"unknown model family; registered: {', '.join(known)}")
        check(fam in arch.args, key, f"not among the model.arch values {list(arch.args)}")
        sub = sub or {}
        check(isinstance(sub, Mapping), key, f"expected a mapping of model keys, got {sub!r}")
        check("arch" not in sub, f"{key}.arch", "set by the family; remove it")
        parsed[fam] = {str(k): _parse_value(v, f"{key}.{k}") for k, v in sub.items()}
    model["families"] = parsed


def _parse_search(raw: Any) -> SearchSettings:
    s = SearchSettings(num_samples=20)
    if raw is None:
        return s
    check(isinstance(raw, Mapping), "search", f"expected a mapping, got {raw!r}")
    simple = {"algorithm": str, "num_samples": int, "metric": str, "mode": str, "seed": int}
    simple |= {"max_concurrent": int, "max_failures": int}
    for key, value in raw.items():
        k = f"search.{key}"
        if key in simple:
            kind = simple[key]
            ok = isinstance(value, kind) and not isinstance(value, bool)
            ok = ok or (key == "max_concurrent" and value is None)
            check(ok, k, f"expected {kind.__name__}, got {value!r}")
            setattr(s, key, value)
        elif key == "time_budget":
            s.time_budget_s = parse_duration(value, k)
        elif key == "scheduler":
            _parse_scheduler(value, s)
        else:
            known = [*simple, "time_budget", "scheduler"]
            raise ConfigError(f"{k}: unknown key; known keys: {', '.join(known)}")
    check(s.algorithm in ALGORITHMS, "search.algorithm", f"must be one of {ALGORITHMS}, got {s.algorithm!r}")
    if "num_samples" not in raw:
        s.num_samples = 1 if s.algorithm == "grid" else 20
    _check_metric(s)
    check(s.num_samples >= 1, "search.num_samples", f"must be >= 1, got {s.num_samples}")
    check(s.max_failures >= 0, "search.max_failures", f"must be >= 0, got {s.max_failures}")
    check(s.max_concurrent is None or s.max_concurrent >= 1, "search.max_concurrent", "must be >= 1")
    return s


def _check_metric(s: SearchSettings) -> None:
    """A known metric, and a mode that agrees with its direction (filled in when the metric has one)."""
    known = ", ".join(METRIC_MODES)
    check(s.metric in METRIC_MODES, "search.metric", f"unknown metric {s.metric!r}; known: {known}")
    check(s.mode in (None, "min", "max"), "search.mode", f"must be min or max, got {s.mode!r}")
    direction = METRIC_MODES[s.metric]
    if direction is None:
        check(s.mode is not None, "search.mode", f"required with search.metric {s.metric} (min or max)")
    else:
        check(
            s.mode in (None, direction),
            "search.mode",
            f"{s.mode} contradicts search.metric {s.metric}, which is {direction}imised",
        )
        s.mode = direction


def _parse_scheduler(value: Any, s: SearchSettings) -> None:
    if value is None or isinstance(value, str):
        value = {"type": value or "none"}
    check(isinstance(value, Mapping), "search.scheduler", f"expected asha, none or a mapping, got {value!r}")
    for key, v in value.items():
        k = f"search.scheduler.{key}"
        if key == "type":
            check(v in SCHEDULERS, k, f"must be one of {SCHEDULERS}, got {v!r}")
            s.scheduler = v
        elif key in ("max_t", "grace_period", "reduction_factor"):
            ok = (
                isinstance(v, int)
                and not isinstance(v, bool)
                and v >= (2 if key == "reduction_factor" else 1)
            )
            check(ok or (key == "max_t" and v is None), k, f"expected a positive integer, got {v!r}")
            setattr(s, key, v)
        else:
            raise ConfigError(f"{k}: unknown key; known keys: type, max_t, grace_period, reduction_factor")


def _parse_resources(raw: Any) -> Resources:
    r = Resources()
    if raw is None:
        return r
    check(isinstance(raw, Mapping), "resources", f"expected a mapping, got {raw!r}")
    for key, value in raw.items():
        k = f"resources.{key}"
        check(
            key in ("cpus_per_trial", "gpus_per_trial", "gpu_shares"),
            k,
            "unknown key; known: cpus_per_trial, gpus_per_trial, gpu_shares",
        )
        if key == "gpu_shares":
            check(isinstance(value, Mapping), k, f"expected a mapping family -> GPU share, got {value!r}")
            for arch, v in value.items():
                check(_is_number(v) and v > 0, f"{k}.{arch}", f"expected a number > 0, got {v!r}")
            r.gpu_shares = {str(a): float(v) for a, v in value.items()}
            continue
        if key == "gpus_per_trial" and value == "auto":
            r.gpus_per_trial = "auto"
            continue
        check(
            value is None or (_is_number(value) and value >= 0), k, f"expected a number >= 0, got {value!r}"
        )
        setattr(r, key, None if value is None else float(value))
    return r


def _check_gpu_share(g: float, key: str) -> None:
    # A trial trains on one GPU (no multi-GPU trials yet); shares that do not divide 1 strand a remainder of
    # every GPU (ray#5902).
    check(g <= 1, key, f"a trial trains on one GPU: must be <= 1, got {g:g}")
    divides = g == 1 or abs(1 / g - round(1 / g)) < 1e-6
    check(divides, key, f"must be 1 or divide 1 (0.5, 0.25, ...), got {g:g}")


def _check_space(space: Space) -> None:
    s, r = space.search, space.resources
    # Trials are selected on PublicTest: one that trained on it would win by memory, not by generalising.
    train_on = space.groups.get("train", {}).get("train_on", "Training")
    check(
        all(v == "Training" for v in _values(train_on)),
        "train.train_on",
        f"a search selects on PublicTest and may not train on it; got {_to_yaml(train_on)!r} "
        "(train on Training+PublicTest in the final `fer-tune retrain --train-on`)",
    )
    if s.algorithm != "grid":
        for d in space.dists():
            check(
                d.kind != "grid",
                d.path,
                f"grid values need search.algorithm: grid (this is {s.algorithm}); use choice",
            )
    check(r.cpus_per_trial >= 0, "resources.cpus_per_trial", "must be >= 0")
    g = r.gpus_per_trial
    if isinstance(g, str):
        check(g == "auto", "resources.gpus_per_trial", f"expected a number >= 0 or auto, got {g!r}")
    elif g is not None and g > 0:
        _check_gpu_share(g, "resources.gpus_per_trial")
    for arch, share in (r.gpu_shares or {}).items():
        _check_gpu_share(share, f"resources.gpu_shares.{arch}")
    gpu = g == "auto" or (g or 0) > 0
    check(r.cpus_per_trial > 0 or gpu, "resources.cpus_per_trial", "a trial needs some CPU or GPU")
    if s.max_t is not None and s.scheduler == "asha":
        check(s.grace_period <= s.max_t, "search.scheduler.grace_period", f"must be <= max_t={s.max_t}")
    # Sampled configs must be valid run configs: every family, every distribution at both ends.
    families = space.families
    for config in space.sample(n=3, seed=s.seed):
        try:
            RunConfig.from_dict(config)
        except ConfigError as e:
            msg, fam = str(e), config["model"].get("arch")
            key = msg.split(":", 1)[0].split(".")
            if fam in families and key[0] == "model" and len(key) > 1 and key[1] in families[fam]:
                msg = f"model.families.{fam}.{msg.removeprefix('model.')}"
            raise ConfigError(f"{msg} (in a sampled config)") from None


# -- sampling helpers ----------------------------------------------------------------------------------------


def _leaves(tree: Any):
    if isinstance(tree, Dist):
        yield tree
    elif isinstance(tree, dict):
        for v in tree.values():
            yield from _leaves(v)
    elif isinstance(tree, list):
        for v in tree:
            yield from _leaves(v)


def _values(node: Any) -> list[Any]:
    """The extreme values a node can take (for max_epochs)."""
    if isinstance(node, Dist):
        return list(node.args[:2]) if node.kind not in ("choice", "grid") else list(node.args)
    return [node]


def _to_yaml(node: Any) -> Any:
    if isinstance(node, Dist):
        return node.to_yaml()
    if isinstance(node, dict):
        return {k: _to_yaml(v) for k, v in node.items()}
    if isinstance(node, list):
        return [_to_yaml(v) for v in node]
    return node


def _resolve(node: Any, suggest) -> Any:
    if isinstance(node, Dist):
        return suggest(node)
    if isinstance(node, dict):
        return {k: _resolve(v, suggest) for k, v in node.items()}
    if isinstance(node, list):
        return [_resolve(v, suggest) for v in node]
    return node


def _encode(value: Any) -> Any:
    """Optuna stores only primitive categorical values: lists (kernel widths) go in as JSON text."""
    return value if isinstance(value, _PRIMITIVE) else json.dumps(value)


def _decode(value: Any, choices: tuple) -> Any:
    return value if any(value is c or value == c for c in choices) else json.loads(value)


def _is_int(d: Dist) -> bool:
    return all(isinstance(a, int) for a in d.args)


def _corner(d: Dist, end: int) -> Any:
    if d.kind in ("choice", "grid"):
        return _encode(d.args[end])
    return d.args[0] if end == 0 else d.args[1]


def _suggest(trial: Any, d: Dist) -> Any:
    if d.kind in ("choice", "grid"):
        return _decode(trial.suggest_categorical(d.name, [_encode(v) for v in d.args]), d.args)
    lo, hi = d.args[0], d.args[1]
    if d.kind == "uniform":
        return trial.suggest_float(d.name, lo, hi)
    if d.kind == "loguniform":
        return trial.suggest_float(d.name, lo, hi, log=True)
    if d.kind == "randint":
        return trial.suggest_int(d.name, lo, hi)
    q = d.args[2]
    if d.kind == "quniform":
        if _is_int(d):
            return trial.suggest_int(d.name, lo, hi, step=q)
        return trial.suggest_float(d.name, lo, hi, step=q)
    # qloguniform: Optuna has no stepped log scale; round as Ray's qloguniform does.
    x = round(trial.suggest_float(d.name, lo, hi, log=True) / q) * q
    return int(x) if _is_int(d) else x


def _ray_domain(d: Dist) -> Any:
    from ray import tune

    a = d.args
    if d.kind == "choice":
        return tune.choice(list(a))
    if d.kind == "grid":
        return tune.grid_search(list(a))
    if d.kind == "uniform":
        return tune.uniform(a[0], a[1])
    if d.kind == "loguniform":
        return tune.loguniform(a[0], a[1])
    if d.kind == "randint":
        return tune.randint(a[0], a[1] + 1)  # Ray's upper bound is exclusive; ours is inclusive
    if d.kind == "quniform":
        return tune.qrandint(*a) if _is_int(d) else tune.quniform(*a)
    return tune.qlograndint(*a) if _is_int(d) else tune.qloguniform(*a)
