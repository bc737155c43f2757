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
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fer_tune.base import ConfigError, FerTuneError, check, read_yaml, shown
from fer_tune.search.dist import DISTRIBUTIONS, Dist
from fer_tune.search.space_options import (  # noqa: F401  (re-exported)
    ALGORITHMS,
    STUDY_ALGORITHMS_TEXT,
    Resources,
    SearchSettings,
    _check_gpu_share,
    _is_number,
    _parse_resources,
    _parse_search,
    check_search,
    parse_duration,
)
from fer_tune.training import (
    METRIC_MODES,  # noqa: F401  (re-exported)
    RunConfig,
)

GROUPS = ("model", "train", "augment", "seed")
TOP_KEYS = (*GROUPS, "search", "resources", "data")


@dataclass
class Space:
    """A parsed, validated search space.

    Args:
        name: the file's stem (`resnet`), the default search name.
        source: the file it was read from.
        groups: the run-config groups (`model`, `train`, `augment`, `seed`) with `Dist` leaves; `model` may
            hold `families` (family name -> its sub-space).
        search: the `search` block.
        resources: the `resources` block.
        data: the space's `data:` path; None when it has none.
    """

    name: str  # file stem, e.g. "resnet"
    source: str  # the file it was read from
    groups: dict[str, Any]  # run-config groups with Dist leaves; model may hold `families`
    search: SearchSettings = field(default_factory=SearchSettings)
    resources: Resources = field(default_factory=Resources)
    data: str | None = None

    @property
    def families(self) -> dict[str, dict[str, Any]]:
        """`model.families`: family name -> its sub-space ({} without families)."""
        return self.groups.get("model", {}).get("families", {})

    def dists(self) -> list[Dist]:
        """Every distribution of the space, in file order.

        Returns:
            The `Dist` leaves, family sub-spaces included.
        """
        return list(_leaves(self.groups))

    def varied_keys(self) -> list[str]:
        """Run-config keys a trial's config varies in, Ray style (`model/kernels`): the progress columns.

        Returns:
            `model/arch` first, then each varied key once (a per-layer list as the whole list's key).
        """
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
        """The largest `train.epochs` any trial can have (ASHA's default max_t).

        Returns:
            Epochs; 30 (the default) when the space leaves `train.epochs` out.
        """
        epochs = self.groups.get("train", {}).get("epochs", 30)
        return int(max(_values(epochs)))

    def grid_size(self) -> int:
        """Configs in one pass over the grid (1 without grid values).

        Returns:
            The product of the grid values' counts (summed over the families of a grid `model.arch`).
        """

        def size(tree: Any) -> int:
            return math.prod(len(d.args) for d in _leaves(tree) if d.kind == "grid")

        shared = {k: v for k, v in self.groups.items() if k != "model"}
        model = {k: v for k, v in self.groups.get("model", {}).items() if k not in ("families", "arch")}
        arch = self.groups.get("model", {}).get("arch")
        archs = arch.args if isinstance(arch, Dist) and arch.kind == "grid" else [None]
        per_arch = sum(size(self.families.get(a, {})) if a else 1 for a in archs)
        return size(shared) * size(model) * per_arch

    def total_trials(self) -> int:
        """Trials the search runs when nothing stops it.

        Returns:
            `search.num_samples`, times the grid's size for a grid search.
        """
        n = self.search.num_samples
        return n * self.grid_size() if self.search.algorithm == "grid" else n

    def to_dict(self) -> dict[str, Any]:
        """The resolved space (overrides and defaults applied) in the file format: written as `space.yaml`.

        Returns:
            Plain values that `parse_space` reads back into an equal space.
        """
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
            "trial_timeout": search.pop("trial_timeout_s"),
            **search,
        }
        out["resources"] = {k: v for k, v in dataclasses.asdict(self.resources).items() if v is not None}
        if self.data:
            out["data"] = self.data
        return out

    # -- translations (fer_tune.search.conversion) ------------------------------------------------------

    def param_space(self) -> dict[str, Any]:
        """The space in Ray Tune's search space API, for `BasicVariantGenerator` (random and grid search).

        Returns:
            See `fer_tune.search.conversion.param_space`.
        """
        from fer_tune.search.conversion import param_space

        return param_space(self)

    def define_by_run(self) -> Any:
        """The space as an Optuna define-by-run function (for `OptunaSearch(space=...)`).

        Returns:
            A picklable `DefineByRun` that returns the complete run config of a trial.
        """
        from fer_tune.search.conversion import DefineByRun

        return DefineByRun(self.groups)

    def sample(self, n: int = 3, seed: int = 0) -> list[dict[str, Any]]:
        """Draw configs with Optuna's random sampler: per family, all-low, all-high and `n` random ones.

        Args:
            n: random configs per family.
            seed: seeds the sampler.

        Returns:
            Nested run-config mappings (not validated: see `RunConfig.from_dict`).
        """
        from fer_tune.search.conversion import sample

        return sample(self, n, seed)


# -- loading and checking ------------------------------------------------------------------------------------


def bundled_dir() -> Path:
    """The bundled spaces: `fer_tune/search_spaces/` in an installed wheel, `search_spaces/` in a checkout
    (also for an editable install, whose finder does not resolve that data-only package).

    Returns:
        The first of those folders that exists (the wheel's when neither does).
    """
    package = Path(__file__).resolve().parents[1]  # fer_tune/
    for folder in (package / "search_spaces", package.parent / "search_spaces"):
        if folder.is_dir():
            return folder
    return package / "search_spaces"


def bundled_names() -> list[str]:
    """The names of the bundled spaces (`resnet`, `families`, ...), sorted.

    Returns:
        The stems of the YAML files in `bundled_dir()`.
    """
    return sorted(p.stem for p in bundled_dir().glob("*.yaml"))


def resolve_path(name: str | Path) -> Path:
    """A path as given when it exists, else a bundled space (`resnet` or `resnet.yaml`).

    Args:
        name: a space file, or a bundled space's name with or without `.yaml`.

    Returns:
        The file.

    Raises:
        ConfigError: neither a file nor a bundled space.
    """
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

    Args:
        name: a space file, or a bundled space's name (`resnet`).
        **overrides: `search` or `resources` fields (`num_samples=8`, `gpus_per_trial=0.5`) or `data`; a
            None value keeps the file's.

    Returns:
        The parsed, checked space.

    Raises:
        ConfigError: no such space, a file that is not YAML (`read_yaml`: binary, a key given twice, an alias
            bomb), or a bad key or value; the message names the file.
    """
    path = resolve_path(name)
    raw = read_yaml(path)
    try:
        return parse_space(raw, name=path.stem, source=str(path), **overrides)
    except FerTuneError as e:
        raise ConfigError(f"{path}: {e}") from None


def parse_space(raw: Any, *, name: str = "space", source: str = "", **overrides: Any) -> Space:
    """Parse and check a space mapping (see `load_space`); errors start with the key path.

    Args:
        raw: the space as read from YAML.
        name: the space's name (the default search name).
        source: where it came from, recorded in the space.
        **overrides: as for `load_space`.

    Returns:
        The parsed space; sampled configs are checked to be valid run configs.

    Raises:
        ConfigError: a bad key or value.
    """
    check(isinstance(raw, Mapping), "space", f"expected a mapping of {', '.join(TOP_KEYS)}, got {shown(raw)}")
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
        check(isinstance(raw[g], Mapping), g, f"expected a mapping, got {shown(raw[g])}")
        groups[g] = {str(k): _parse_value(v, f"{g}.{k}") for k, v in raw[g].items() if k != "families"}
    _parse_families(raw["model"], groups["model"])
    search, resources = _parse_search(raw.get("search")), _parse_resources(raw.get("resources"))
    data = raw.get("data")
    check(data is None or isinstance(data, str), "data", f"expected a path, got {shown(data)}")
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


def _parse_value(value: Any, path: str) -> Any:
    """A fixed value, a list (whose items may be distributions), or a one-key distribution mapping."""
    if isinstance(value, list):
        return [_parse_value(v, f"{path}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, Mapping):
        return value
    check(
        len(value) == 1 and next(iter(value)) in DISTRIBUTIONS,
        path,
        f"expected a value or one distribution ({', '.join(DISTRIBUTIONS)}), got {shown(dict(value))}",
    )
    kind, args = next(iter(value.items()))
    check(isinstance(args, list), path, f"{kind}: expected a list, got {shown(args)}")
    if kind in ("choice", "grid"):
        check(len(args) > 0, path, f"{kind}: needs at least one value")
        for v in args:
            check(not isinstance(v, Mapping), path, f"{kind}: values must be fixed, got {shown(v)}")
        return Dist(kind, tuple(args), path)
    n = 3 if kind.startswith("q") else 2
    form = "[low, high, q]" if n == 3 else "[low, high]"
    check(
        len(args) == n and all(_is_number(a) for a in args),
        path,
        f"{kind}: expected {form} of finite numbers, got {shown(args)}",
    )
    lo, hi = args[0], args[1]
    if kind == "randint":
        check(all(isinstance(a, int) for a in args), path, f"randint: expected integers, got {shown(args)}")
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
        check(isinstance(sub, Mapping), key, f"expected a mapping of model keys, got {shown(sub)}")
        check("arch" not in sub, f"{key}.arch", "set by the family; remove it")
        parsed[fam] = {str(k): _parse_value(v, f"{key}.{k}") for k, v in sub.items()}
    model["families"] = parsed


def _check_space(space: Space) -> None:
    s, r = space.search, space.resources
    # Trials are selected on PublicTest: one that trained on it would win by memory, not by generalising.
    train_on = space.groups.get("train", {}).get("train_on", "Training")
    check(
        all(v == "Training" for v in _values(train_on)),
        "train.train_on",
        f"a search selects on PublicTest and may not train on it; got {shown(_to_yaml(train_on))} "
        "(train on Training+PublicTest in the final `fer-tune retrain --train-on`)",
    )
    if s.algorithm != "grid":
        for d in space.dists():
            check(
                d.kind != "grid",
                d.path,
                f"grid values need search.algorithm: grid (this is {s.algorithm}); use choice",
            )
    check_search(s)  # again: flags (--num-samples, --max-failures) override what the file said
    c = r.cpus_per_trial
    check(_is_number(c) and c >= 0, "resources.cpus_per_trial", f"must be a number >= 0, got {shown(c)}")
    g = r.gpus_per_trial
    if isinstance(g, str):
        check(g == "auto", "resources.gpus_per_trial", f"expected a number >= 0 or auto, got {shown(g)}")
    elif g is not None:
        check(_is_number(g) and g >= 0, "resources.gpus_per_trial", f"must be a number >= 0, got {shown(g)}")
        if g > 0:
            _check_gpu_share(g, "resources.gpus_per_trial")
    for arch, share in (r.gpu_shares or {}).items():
        _check_gpu_share(share, f"resources.gpu_shares.{arch}")
    gpu = g == "auto" or (g or 0) > 0
    check(r.cpus_per_trial > 0 or gpu, "resources.cpus_per_trial", "a trial needs some CPU or GPU")
    if s.max_t is not None and s.scheduler == "asha":
        check(s.grace_period <= s.max_t, "search.scheduler.grace_period", f"must be <= max_t={s.max_t}")
    if s.points_to_evaluate:
        from fer_tune.search.conversion import point_params

        # Ray's random search cannot take a partial config of one family (its points overwrite the choice)
        key = "search.points_to_evaluate"
        needs = f"needs search.algorithm: {STUDY_ALGORITHMS_TEXT}, not {s.algorithm}"
        check(s.uses_study, key, needs)
        for i, point in enumerate(s.points_to_evaluate):
            point_params(space, point, f"search.points_to_evaluate.{i}")
    if s.warm_start:  # Ray's random and grid search have no study to tell earlier trials to
        needs = f"needs search.algorithm: {STUDY_ALGORITHMS_TEXT}, not {s.algorithm}"
        check(s.uses_study, "search.warm_start", needs)
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
