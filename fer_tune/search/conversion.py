"""The Ray Tune and Optuna translations of a parsed search space.

Ray's search-space API (for grid and random search), an Optuna define-by-run function (TPE, conditional
families), each distribution as Optuna's own distribution type (what the report plots and importance use),
whether a trial's config lies inside a space (what `fer-tune extend` keeps from its sampler), and the
Optuna parameters a space would have proposed an earlier trial's config with (a warm start's).
"""

from __future__ import annotations

import json
import math
from typing import TYPE_CHECKING, Any

from fer_tune.base import ConfigError, check, shown
from fer_tune.search.dist import PRIMITIVE, Dist

if TYPE_CHECKING:  # a Space is only read here; fer_tune.search.space imports this module
    from fer_tune.search.space import Space


def param_space(space: Space) -> dict[str, Any]:
    """The space in Ray Tune's search space API, for `BasicVariantGenerator` (random and grid search).

    Args:
        space: the parsed space.

    Returns:
        The run-config groups with Ray domains as leaves; with families, `model` is a choice (or grid) of
        one whole model mapping per family.
    """
    from ray import tune

    def conv(node: Any) -> Any:
        if isinstance(node, Dist):
            return _ray_domain(node)
        if isinstance(node, dict):
            return {k: conv(v) for k, v in node.items()}
        if isinstance(node, list):
            return [conv(v) for v in node]
        return node

    out = {k: conv(v) for k, v in space.groups.items() if k != "model"}
    model = dict(space.groups.get("model", {}))
    families = model.pop("families", {})
    arch = model.get("arch")
    if families:
        # Conditional: one alternative per family; Ray resolves the domains nested in the chosen one.
        options = [conv({**model, **families.get(a, {}), "arch": a}) for a in arch.args]
        out["model"] = tune.grid_search(options) if arch.kind == "grid" else tune.choice(options)
    else:
        out["model"] = conv(model)
    return out


def sample(space: Space, n: int = 3, seed: int = 0) -> list[dict[str, Any]]:
    """Draw configs with Optuna's random sampler: per family, all-low, all-high and `n` random ones.

    Args:
        space: the parsed space.
        n: random configs per family.
        seed: seeds the sampler.

    Returns:
        `n + 2` nested run-config mappings per family (not validated).
    """
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    fn = DefineByRun(space.groups)
    arch = space.groups.get("model", {}).get("arch")
    archs = arch.args if isinstance(arch, Dist) else [None]
    configs = []
    for a in archs:
        fixed = {"model/arch": _encode(a)} if a is not None else {}
        for end in (0, -1):
            study.enqueue_trial({**{d.name: _corner(d, end) for d in space.dists()}, **fixed})
        for _ in range(n):
            study.enqueue_trial(fixed)
        configs += [fn(study.ask()) for _ in range(n + 2)]
    return configs


def point_params(space: Space, point: dict[str, Any], key: str = "point") -> dict[str, Any]:
    """The Optuna parameters (`train/lr`: 0.01) of a partial run config tried first (`points_to_evaluate`).

    Every key it gives must be one the space samples, with a value the space could draw (`key` names the point
    in errors); keys it leaves out are sampled as usual.

    Args:
        space: the parsed space.
        point: a nested partial run config.
        key: the key path of the point, for messages (`search.points_to_evaluate.0`).

    Returns:
        Optuna parameter name -> value, for `study.enqueue_trial`.

    Raises:
        ConfigError: a key the space does not sample, a value it could not draw, or a missing `model.arch`
            in a space of several families.
    """
    flat = _flatten(point)
    arch_node = space.groups.get("model", {}).get("arch")
    arch = flat.get("model.arch", arch_node)
    if not isinstance(arch_node, Dist):
        check(
            arch == arch_node, f"{key}.model.arch", f"{shown(arch)}: this space's arch is {shown(arch_node)}"
        )
    elif "model.arch" not in flat and space.families:
        raise ConfigError(f"{key}.model.arch: missing; the space samples it ({list(arch_node.args)})")
    params: dict[str, Any] = {}
    used: set[str] = set()
    for d in space.dists():
        parts = d.path.split(".")
        if parts[:2] == ["model", "families"] and parts[2] != arch:
            continue
        k = config_key(d)
        head, _, last = k.rpartition(".")
        if k in flat:
            value = flat[k]
        elif last.isdigit() and isinstance(flat.get(head), list) and int(last) < len(flat[head]):
            value, k = flat[head][int(last)], head  # a per-layer width of the list the point gives
        else:
            continue
        check(
            _contains(d, value),
            f"{key}.{config_key(d)}",
            f"{shown(value)} not in {d.kind} {shown(list(d.args))}",
        )
        params[d.name] = _encode(value) if d.kind in ("choice", "grid") else value
        used.add(k)
    for k in flat:
        check(k in used or k == "model.arch", f"{key}.{k}", "not a key this space samples")
    return params


def _flatten(node: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in node.items():
        path = f"{prefix}{k}"
        out |= _flatten(v, f"{path}.") if isinstance(v, dict) else {path: v}
    return out


class DefineByRun:
    """Optuna define-by-run function over a parsed space; picklable, as OptunaSearch saves it with its state.

    Parameters are named by their key path (`train/lr`, `model/families/cnn/kernels/0`), so each family has
    its own parameters. It returns the complete run config: OptunaSearch merges that over the captured
    parameters and `unflatten_dict`s the result; as the returned group keys (`model`, `train`, ...) come
    after the `group/...` parameter names, the trial's config is exactly the run config.

    Args:
        groups: the parsed space's run-config groups (`Space.groups`).
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
    return value if isinstance(value, PRIMITIVE) else json.dumps(value)


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


def distribution(d: Dist) -> Any:
    """The Optuna distribution `DefineByRun` suggests `d` from (qloguniform: its log-scale float).

    Args:
        d: a distribution of the space.

    Returns:
        An optuna `CategoricalDistribution` (lists as JSON text), `IntDistribution` or
        `FloatDistribution`.
    """
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if d.kind in ("choice", "grid"):
        return CategoricalDistribution([_encode(v) for v in d.args])
    lo, hi = d.args[0], d.args[1]
    if d.kind == "randint":
        return IntDistribution(lo, hi)
    if d.kind == "quniform":
        step = d.args[2]
        return IntDistribution(lo, hi, step=step) if _is_int(d) else FloatDistribution(lo, hi, step=step)
    return FloatDistribution(lo, hi, log=d.kind in ("loguniform", "qloguniform"))


def config_key(d: Dist) -> str:
    """The run-config key a distribution sets (`model.families.cnn.dropout` -> `model.dropout`).

    Args:
        d: a distribution of the space.

    Returns:
        The dotted key.
    """
    parts = d.path.split(".")
    if parts[:2] == ["model", "families"]:
        parts = ["model", *parts[3:]]
    return ".".join(parts)


def config_distributions(space: Space) -> dict[str, Any]:
    """Run-config key -> Optuna distribution of every scalar key the space samples (per-layer list items,
    `model.kernels.0`, are left out: tables show the whole list).

    Args:
        space: the parsed space.

    Returns:
        `{dotted key: optuna distribution}`; the first family that declares a key wins.
    """
    out: dict[str, Any] = {}
    for d in space.dists():
        key = config_key(d)
        if not key.split(".")[-1].isdigit():
            out.setdefault(key, distribution(d))
    return out


def outside(space: Space, config: dict[str, Any]) -> str | None:
    """None when `space` could have proposed the run config `config` (a trial's params.json), else the first
    key that it could not have, with its value: `train.lr 0.05 not in loguniform [0.001, 0.01]`.

    Args:
        space: the parsed space.
        config: a trial's run config; keys it leaves out are compared at their defaults.

    Returns:
        None, or the first key outside the space with its value.

    Raises:
        ConfigError: `config` is not a valid run config.
    """
    from fer_tune.training import RunConfig

    resolved = RunConfig.from_dict(config).to_dict()  # the keys a space leaves out are at their defaults
    return _outside_resolved(space, resolved)


def _outside_resolved(space: Space, resolved: dict[str, Any]) -> str | None:
    """`outside` of a run config already resolved (`RunConfig.to_dict`)."""
    expected = _family_tree(space, resolved["model"]["arch"])
    arch = space.groups.get("model", {}).get("arch")
    if arch is not None:  # compared first, as the space lists it
        expected["model"] = {"arch": arch, **expected["model"]}
    return _outside(expected, resolved, "")


def trial_params(space: Space, config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | str:
    """The Optuna parameters and distributions with which `space` would have proposed the run config `config`
    (an earlier trial's params.json), or why it could not have: the first key outside its ranges, or one that
    differs from a value it fixes (keys it leaves out at their defaults included).

    Args:
        space: the parsed space.
        config: a trial's run config.

    Returns:
        (parameter name -> value, parameter name -> Optuna distribution), exactly as `DefineByRun` suggests
        them; or the reason, `train.lr 0.5 not in loguniform [0.001, 0.1]`.

    Raises:
        ConfigError: `config` is not a valid run config.
    """
    from optuna.trial import FixedTrial

    from fer_tune.training import RunConfig

    resolved = RunConfig.from_dict(config).to_dict()
    why = _outside_resolved(space, resolved)
    if why:
        return why
    arch = resolved["model"]["arch"]
    params: dict[str, Any] = {}
    for d in space.dists():
        parts = d.path.split(".")
        if parts[:2] == ["model", "families"] and parts[2] != arch:
            continue
        value: Any = resolved
        for part in config_key(d).split("."):
            value = value[int(part)] if isinstance(value, list) else value[part]
        if d.kind in ("choice", "grid"):
            value = _encode(next(c for c in d.args if _same(value, c)))  # the choice itself, as Optuna has it
        elif d.kind == "randint" or (d.kind == "quniform" and _is_int(d)):
            value = round(value)  # an IntDistribution's (a rotation of 10.0 is 10; 7.5 differs below)
        params[d.name] = value
    trial = FixedTrial(params)  # DefineByRun suggests from it: the config and distributions of a real trial
    proposed = RunConfig.from_dict(DefineByRun(space.groups)(trial)).to_dict()
    return _outside(proposed, resolved, "") or (trial.params, trial.distributions)


def _outside(expected: Any, actual: Any, path: str) -> str | None:
    if isinstance(expected, Dist):
        return (
            None
            if _contains(expected, actual)
            else f"{path} {shown(actual)} not in {expected.kind} {shown(list(expected.args))}"
        )
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return f"{path} {shown(actual)} is not a mapping"
        for k, v in expected.items():
            found = _outside(v, actual.get(k), f"{path}.{k}".lstrip("."))
            if found:
                return found
        return None
    if isinstance(expected, list):
        if not isinstance(actual, list) or len(actual) != len(expected):
            return f"{path} {shown(actual)} has not {len(expected)} items"
        for i, (e, a) in enumerate(zip(expected, actual, strict=True)):
            found = _outside(e, a, f"{path}.{i}")
            if found:
                return found
        return None
    return None if _same(expected, actual) else f"{path} {shown(actual)} is not {shown(expected)}"


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        return (
            isinstance(b, (int, float)) and isinstance(a, (int, float)) and math.isclose(a, b, rel_tol=1e-9)
        )
    return a == b


def _contains(d: Dist, value: Any) -> bool:
    if d.kind in ("choice", "grid"):
        return any(_same(value, c) for c in d.args)
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        return False
    lo, hi = d.args[0], d.args[1]
    return lo * (1 - 1e-9) <= value <= hi * (1 + 1e-9) if lo > 0 else lo - 1e-12 <= value <= hi + 1e-12


def widens(search: Space, new: Space) -> str | None:
    """None when `new` samples nothing outside `search` (an extension's space: ranges narrowed, values fixed
    within them, fixed settings changed), else the first key it widens, with both ranges:
    `train.lr: loguniform [0.001, 0.5] reaches 0.5, outside the search's loguniform [0.001, 0.1]`.

    An extension must not widen: the study's earlier phases and the report's distributions (the first phase's
    range of each key) are the search's.

    Args:
        search: the search's space (its first phase).
        new: the extension's space.

    Returns:
        None, or the first widened key with what widens it.
    """
    old_arch, new_arch = (s.groups.get("model", {}).get("arch") for s in (search, new))
    found = _wider(old_arch, new_arch, "model.arch")
    if found:
        return found
    for arch in new_arch.args if isinstance(new_arch, Dist) else [new_arch]:
        found = _wider(_family_tree(search, arch), _family_tree(new, arch), "")
        if found:
            return found
    return None


def _family_tree(space: Space, arch: Any) -> dict[str, Any]:
    """The space's groups as one family sees them: its sub-space merged into `model`, no `arch`."""
    model = dict(space.groups.get("model", {}))
    families = model.pop("families", {})
    model.pop("arch", None)
    return {
        **{k: v for k, v in space.groups.items() if k != "model"},
        "model": {**model, **families.get(arch, {})},
    }


_UNSAMPLED = object()  # a key the search left at its default


def _wider(old: Any, new: Any, path: str) -> str | None:
    if isinstance(new, dict):
        old = old if isinstance(old, dict) else {}
        for k, v in new.items():
            found = _wider(old.get(k, _UNSAMPLED), v, f"{path}.{k}".lstrip("."))
            if found:
                return found
        return None
    if isinstance(new, list):
        old = old if isinstance(old, list) else []
        for i, v in enumerate(new):
            found = _wider(old[i] if i < len(old) else _UNSAMPLED, v, f"{path}.{i}")
            if found:
                return found
        return None
    if not isinstance(new, Dist):
        if isinstance(old, Dist) and not _contains(old, new):
            return f"{path}: {shown(new)} lies outside the search's {old.kind} {shown(list(old.args))}"
        return None  # a fixed value, or a fixed setting changed
    ends = new.args if new.kind in ("choice", "grid") else new.args[:2]
    if isinstance(old, Dist):
        for v in ends:
            if not _contains(old, v):
                return (
                    f"{path}: {new.kind} {shown(list(new.args))} reaches {shown(v)}, outside the search's "
                    f"{old.kind} {shown(list(old.args))}"
                )
        return None
    if old is not _UNSAMPLED and all(_same(v, old) for v in ends):
        return None
    fixed = "left it at its default" if old is _UNSAMPLED else f"fixed it at {shown(old)}"
    return f"{path}: {new.kind} {shown(list(new.args))}, where the search {fixed}"
