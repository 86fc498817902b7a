"""Feature-specific queries: prompts or class conditions that vary one factor at a time.

A :class:`QuerySpec` names the factors (``color``, ``shape``, ``texture`` …), their levels, and the
conditions to run, each a level of every factor; every condition is run with the same seeds, so
two conditions' samples differ in the condition only.  Written as TOML (:meth:`QuerySpec.from_toml`)::

    template = "a {color} {shape}"       # prompts; or  classes = "diffshapes"  for the toy model
    samples = 8                          # seeds per condition: seed, seed + 1, ...
    seed = 0
    design = "one-at-a-time"             # or "factorial"; or list the conditions (below)

    [factors]
    color = ["red", "blue", "green"]
    shape = ["circle", "square"]

    [base]                               # the levels the other factors keep (default: each first level)
    color = "red"
    shape = "circle"

``"one-at-a-time"`` runs the base condition and, for each factor, each of its other levels with
every other factor at its base level; ``"factorial"`` runs every combination.  Explicit conditions
are ``[[conditions]]`` tables giving each factor's level (and a ``prompt``, or a ``class_label``
of any class-conditional model, where there is no template).  For the DiffShapes toy model
(``classes = "diffshapes"``) the factors are among ``shape``, ``color`` and ``texture``, and
``[base]`` names all three: each condition is the class label of its (shape, color, texture).

A spec is refused (:class:`QuerySpecError`) when a factor has one level, a level is unknown, or two
factors are confounded: no two conditions differ in a factor alone, so its effect cannot be told
from the others'.
"""

from __future__ import annotations

import itertools
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib

__all__ = ["DESIGNS", "QuerySpec", "QuerySpecError"]

#: How conditions are made from the factors when none are listed.
DESIGNS = ("one-at-a-time", "factorial")
_TOY_PARTS = ("shape", "color", "texture")
_KEYS = {"template", "classes", "samples", "seed", "design", "factors", "base", "conditions"}


class QuerySpecError(ValueError):
    """A query spec that cannot be run as asked (the message says what to change)."""


def _template_fields(template: str) -> list[str]:
    return [field for _, field, _, _ in string.Formatter().parse(template) if field]


@dataclass(frozen=True)
class QuerySpec:
    """Conditions varying named factors, each run with the same seeds.

    Attributes
    ----------
    factors : dict of str to tuple of str
        Each factor's levels.
    conditions : tuple of dict of str to str
        Each condition's level of every factor.
    prompts : tuple of str or None
        Each condition's prompt (text-conditional models).
    class_labels : tuple of int or None
        Each condition's class label (class-conditional models).
    samples : int
        Seeds per condition.
    seed : int
        The first seed: condition ``c``'s sample ``k`` uses ``seed + k``.
    template : str or None
        The prompt template, words ``{factor}`` filled with its level.
    """

    factors: dict[str, tuple[str, ...]]
    conditions: tuple[dict[str, str], ...]
    prompts: tuple[str, ...] | None
    class_labels: tuple[int, ...] | None
    samples: int
    seed: int = 0
    template: str | None = None

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_toml(cls, source: str | Path) -> QuerySpec:
        """Parse a spec from a TOML file or TOML text (module notes).

        Parameters
        ----------
        source : str or path
            A path to a ``.toml`` file, or the TOML text itself.

        Returns
        -------
        QuerySpec
        """
        path = Path(source) if not isinstance(source, str) or source.endswith(".toml") else None
        text = path.read_text() if path is not None else source
        try:
            data = tomllib.loads(text)
        except tomllib.TOMLDecodeError as error:
            raise QuerySpecError(f"The query spec is not valid TOML: {error}.") from None
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: Mapping) -> QuerySpec:
        """Build a spec from the mapping a TOML file parses to (module notes).

        Parameters
        ----------
        data : mapping

        Returns
        -------
        QuerySpec
        """
        unknown = set(data) - _KEYS
        if unknown:
            raise QuerySpecError(f"Unknown query spec keys {sorted(unknown)}; valid: {sorted(_KEYS)}.")
        factors = {str(f): tuple(str(v) for v in levels) for f, levels in dict(data.get("factors", {})).items()}
        if not factors:
            raise QuerySpecError("The query spec names no [factors].")
        for factor, levels in factors.items():
            if len(set(levels)) < 2 or len(set(levels)) != len(levels):
                raise QuerySpecError(f"Factor {factor!r} needs at least two distinct levels, got {list(levels)}.")
        template, classes = data.get("template"), data.get("classes")
        if (template is not None and classes is not None) or (template is classes is None and "conditions" not in data):
            raise QuerySpecError("Give one of a prompt template (template = \"a {color} {shape}\"), toy-model classes "
                                 "(classes = \"diffshapes\") or a list of [[conditions]] with prompts or class labels.")
        if classes is not None and classes != "diffshapes":
            raise QuerySpecError(f"classes must be \"diffshapes\" (the toy model's conditions), got {classes!r}.")
        base = {f: str(data.get("base", {}).get(f, levels[0])) for f, levels in factors.items()}
        if classes is not None:
            base.update({p: str(v) for p, v in data.get("base", {}).items() if p in _TOY_PARTS})
        conditions = _conditions(data, factors, base)
        if template is not None:
            missing = set(factors) - set(_template_fields(template))
            if missing or set(_template_fields(template)) - set(factors):
                raise QuerySpecError(f"The template {template!r} must name every factor once as {{factor}}; "
                                     f"factors: {sorted(factors)}.")
            prompts = tuple(template.format(**c) for c in conditions)
        else:
            prompts = None
        labels = _toy_labels(conditions, factors, base) if classes is not None else None
        if template is None and classes is None:
            given = [(c.pop("prompt", None), c.pop("class_label", None)) for c in conditions]
            if all(p is not None and q is None for p, q in given):
                prompts = tuple(str(p) for p, _ in given)
            elif all(p is None and q is not None for p, q in given):
                labels = tuple(int(q) for _, q in given)
            else:
                raise QuerySpecError("Without a template or classes, every [[conditions]] entry needs a prompt, "
                                     "or every one a class_label.")
        samples, seed = data.get("samples", 4), data.get("seed", 0)
        if not isinstance(samples, int) or samples < 2:
            raise QuerySpecError(f"samples (seeds per condition) must be an integer >= 2, got {samples!r}.")
        spec = cls(factors=factors, conditions=tuple(conditions), prompts=prompts, class_labels=labels,
                   samples=samples, seed=int(seed), template=template)
        spec.check_design()
        return spec

    def check_design(self) -> None:
        """Refuse unknown levels, repeated conditions and confounded factors.

        Raises
        ------
        QuerySpecError
            A factor that never changes alone (the message names the factors that change with it).
        """
        seen = set()
        for condition in self.conditions:
            if set(condition) != set(self.factors):
                raise QuerySpecError(f"Condition {condition} must give a level of each factor {sorted(self.factors)}.")
            for factor, level in condition.items():
                if level not in self.factors[factor]:
                    raise QuerySpecError(f"{level!r} is no level of {factor!r} (levels: {list(self.factors[factor])}).")
            key = tuple(sorted(condition.items()))
            if key in seen:
                raise QuerySpecError(f"Condition {condition} is listed twice.")
            seen.add(key)
        for factor in self.factors:
            together = None
            for a, b in itertools.combinations(self.conditions, 2):
                if a[factor] == b[factor]:
                    continue
                others = {f for f in self.factors if f != factor and a[f] != b[f]}
                if not others:
                    break
                together = others if together is None else together & others
            else:
                also = f": it changes together with {sorted(together)}" if together else ""
                raise QuerySpecError(f"Factor {factor!r} is confounded{also} — no two conditions differ in "
                                     f"{factor!r} alone, so its effect cannot be told apart. Add conditions that "
                                     "change it alone (design = \"one-at-a-time\").")

    # -- the run -------------------------------------------------------------------------------
    @property
    def n_samples(self) -> int:
        """Samples of the run: conditions × seeds."""
        return len(self.conditions) * self.samples

    def run_options(self) -> dict:
        """The conditioning options of :func:`denoisefeat.trace` for this spec (condition-major samples).

        Returns
        -------
        dict
            ``samples``, ``seed`` (one per sample) and ``prompts`` or ``class_labels``.
        """
        repeat = lambda values: [v for v in values for _ in range(self.samples)]  # noqa: E731
        options = {"samples": self.n_samples, "seed": [self.seed + k for _ in self.conditions
                                                       for k in range(self.samples)]}
        if self.prompts is not None:
            options["prompts"] = repeat(self.prompts)
        else:
            options["class_labels"] = repeat(self.class_labels)
        return options

    def levels(self, factor: str) -> np.ndarray:
        """Each sample's level of ``factor`` (str, one per sample of the run).

        Parameters
        ----------
        factor : str

        Returns
        -------
        numpy.ndarray
        """
        if factor not in self.factors:
            raise QuerySpecError(f"Unknown factor {factor!r}; the spec has {sorted(self.factors)}.")
        return np.repeat(np.array([c[factor] for c in self.conditions]), self.samples)

    def strata(self, factor: str) -> np.ndarray:
        """Each sample's stratum for ``factor``: the index of its other factors' levels.

        Parameters
        ----------
        factor : str

        Returns
        -------
        numpy.ndarray of int
            Samples with the same value share every other factor's level (and so differ in
            ``factor`` only, besides their seeds).
        """
        keys = [tuple(c[f] for f in self.factors if f != factor) for c in self.conditions]
        index = {k: i for i, k in enumerate(dict.fromkeys(keys))}
        return np.repeat(np.array([index[k] for k in keys], dtype=np.int64), self.samples)

    def check_run(self, run) -> None:
        """Refuse a run that was not traced with this spec's conditions and seeds.

        Parameters
        ----------
        run : denoisefeat.store.Run
        """
        attrs, want = run.attrs, self.run_options()
        for key, stored in (("prompts", attrs.get("prompts")), ("class_labels", attrs.get("class_labels")),
                            ("seed", attrs.get("seeds"))):
            if key in want and (stored is None or list(stored) != list(want[key])):
                raise QuerySpecError(f"The run was not traced with this query spec: its {key} differ. "
                                     "Trace it with spec.run_options() (analyses.run_query).")


def _conditions(data: Mapping, factors: dict, base: dict) -> list[dict[str, str]]:
    if "conditions" in data:
        if "design" in data:
            raise QuerySpecError("Give a design or list [[conditions]], not both.")
        return [{str(k): str(v) for k, v in dict(c).items()} for c in data["conditions"]]
    design = data.get("design", DESIGNS[0])
    if design not in DESIGNS:
        raise QuerySpecError(f"Unknown design {design!r}; choose one of {list(DESIGNS)} or list [[conditions]].")
    for factor, level in base.items():
        if factor in factors and level not in factors[factor]:
            raise QuerySpecError(f"The base level {level!r} of {factor!r} is none of its levels "
                                 f"{list(factors[factor])}.")
    if design == "factorial":
        return [dict(zip(factors, combo, strict=True)) for combo in itertools.product(*factors.values())]
    first = {f: base[f] for f in factors}
    out = [first]
    for factor, levels in factors.items():
        out += [{**first, factor: level} for level in levels if level != base[factor]]
    return out


def _toy_labels(conditions: Sequence[dict], factors: dict, base: dict) -> tuple[int, ...]:
    from denoisefeat.toy.diffshapes import condition_label

    unknown = set(factors) - set(_TOY_PARTS)
    if unknown:
        raise QuerySpecError(f"The toy model's factors are {list(_TOY_PARTS)}; unknown: {sorted(unknown)}.")
    fixed = [p for p in _TOY_PARTS if p not in factors and p not in base]
    if fixed:
        raise QuerySpecError(f"Give the toy model's {fixed} in [base]: every condition needs a shape, color "
                             "and texture.")
    try:
        return tuple(condition_label(**{p: c.get(p, base.get(p)) for p in _TOY_PARTS}) for c in conditions)
    except ValueError as error:
        raise QuerySpecError(f"Not a DiffShapes condition: {error}") from None
