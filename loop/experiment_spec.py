"""An experiment's spec (configs/experiments/*.yaml): base config, shared prefix, arms, seeds, analysis plan.

Validated like a run config (unknown keys refused, errors one line naming the key), then resolved
against its base config: the canonical form (the spec and the fully resolved base config) is what the
experiment freezes and hashes, so editing the base config after the freeze also counts as a change.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    field_validator,
    model_serializer,
    model_validator,
)

from tutorloop.loop.core.config import Config, apply_overrides, config_from_dict, load_config, validation_error_line
from tutorloop.loop.core.errors import ConfigError, TutorloopError

PREFIX = "prefix"  # the arm name of a seed's shared prefix run in the index
_DIR_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Comparison(_Section):
    """B against A at one round: accuracy(B) - accuracy(A), seeds as the unit. With `a_round`, A is read at
    that round instead: `a: prefix, a_round: 0` compares an arm with the round 0 its seed's arms forked from."""

    a: str
    b: str
    round: int = Field(ge=0)
    a_round: int | None = Field(None, ge=0, description="A's round when it is not `round` (default: the same)")
    split: Literal["val", "test"] = Field(
        "test", description="test, or val: the validation split (data.val_size), the one tuning may look at"
    )
    metric: str = Field("accuracy", description="accuracy (the run's first eval mode) or accuracy_<mode>")

    @field_validator("metric")
    @classmethod
    def _known_metric(cls, metric: str) -> str:
        if metric != "accuracy" and not metric.startswith("accuracy_"):
            raise ValueError("expected accuracy or accuracy_<eval mode>, e.g. accuracy_explain")
        return metric

    @model_serializer(mode="wrap")
    def _without_unset_a_round(self, handler: SerializerFunctionWrapHandler) -> dict:
        # An unset a_round stays out of the frozen plan, so plans frozen before the key existed hash the same.
        data = handler(self)
        if data.get("a_round") is None:
            data.pop("a_round", None)
        return data

    @property
    def rounds(self) -> tuple[int, int]:
        """(A's round, B's round)."""
        return (self.round if self.a_round is None else self.a_round), self.round

    @property
    def a_label(self) -> str:
        return self.a if self.a_round is None else f"{self.a} round {self.a_round}"

    def label(self) -> str:
        if self.a_round is None:
            return f"{self.b} vs {self.a}, round {self.round}, {self.split} {self.metric}"
        return f"{self.b} round {self.round} vs {self.a_label}, {self.split} {self.metric}"


class Analysis(_Section):
    primary: Comparison
    secondary: list[Comparison] = []
    alpha: float = Field(0.05, gt=0, lt=1)


class ExperimentSpec(_Section):
    name: str
    base: str = Field(description="the base run config, e.g. configs/quick.yaml")
    overrides: list[str] = Field([], description="dotted KEY=VALUE applied to the base for every run")
    prefix_rounds: int = Field(0, ge=0, description="last round every arm shares (0: baseline + round 0)")
    arms: dict[str, list[str]] = Field(min_length=2, description="arm name -> dotted overrides after the prefix")
    seeds: list[int] = Field(min_length=1)
    match_accepted: dict[str, str] = Field(
        {},
        description="arm -> an arm before it whose accepted rationales in each tailored round it gets, seed by "
        "seed, as its training.accepted_budget (arms matched in accepted rationales, not in calls)",
    )
    analysis: Analysis

    @model_serializer(mode="wrap")
    def _without_empty_match(self, handler: SerializerFunctionWrapHandler) -> dict:
        # No matching stays out of the frozen plan, so plans frozen before the key existed hash the same.
        data = handler(self)
        if not data.get("match_accepted"):
            data.pop("match_accepted", None)
        return data

    @field_validator("name")
    @classmethod
    def _folder_name(cls, name: str) -> str:
        if not _DIR_NAME.match(name):
            raise ValueError("expected a folder name: letters, digits, '_', '.', '-'")
        return name

    @field_validator("arms")
    @classmethod
    def _arm_names(cls, arms: dict[str, list[str]]) -> dict[str, list[str]]:
        for name in arms:
            if name == PREFIX or not _DIR_NAME.match(name):
                raise ValueError(f"arm {name!r}: expected a folder name other than {PREFIX!r}")
        return arms

    @field_validator("seeds")
    @classmethod
    def _distinct(cls, seeds: list[int]) -> list[int]:
        if len(set(seeds)) != len(seeds):
            raise ValueError("each seed once")
        return seeds

    @model_validator(mode="after")
    def _comparisons_name_arms(self) -> "ExperimentSpec":
        for where, comparison in self.comparisons():
            a_in_prefix = comparison.a_round is not None and comparison.a_round <= self.prefix_rounds
            for side in ("a", "b"):
                name = getattr(comparison, side)
                if name not in self.arms and not (side == "a" and a_in_prefix and name == PREFIX):
                    raise ValueError(
                        f"key '{where}.{side}': {name!r} is not an arm (arms: {', '.join(self.arms)}"
                        f"{f'; or {PREFIX!r} with a_round in the prefix' if side == 'a' else ''})"
                    )
            if comparison.a == comparison.b and comparison.rounds[0] == comparison.rounds[1]:
                raise ValueError(f"key '{where}': a and b are the same arm at the same round")
            if comparison.round <= self.prefix_rounds:
                raise ValueError(
                    f"key '{where}.round': {comparison.round} is in the shared prefix "
                    f"(rounds up to {self.prefix_rounds}), where the arms do not differ"
                )
        return self

    @model_validator(mode="after")
    def _matched_after_their_source(self) -> "ExperimentSpec":
        order = list(self.arms)
        for arm, source in self.match_accepted.items():
            for name in (arm, source):
                if name not in self.arms:
                    raise ValueError(f"key 'match_accepted.{arm}': {name!r} is not an arm (arms: {', '.join(order)})")
            if order.index(source) >= order.index(arm):
                raise ValueError(
                    f"key 'match_accepted.{arm}': {source!r} must come before {arm!r} in arms (it runs first)"
                )
        return self

    def comparisons(self) -> list[tuple[str, Comparison]]:
        """The declared family, primary first, each with its key in the spec."""
        return [
            ("analysis.primary", self.analysis.primary),
            *((f"analysis.secondary.{i}", c) for i, c in enumerate(self.analysis.secondary)),
        ]


def spec_from_dict(data: Any, source: str) -> ExperimentSpec:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of spec keys at the top level")
    try:
        return ExperimentSpec.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_error_line(exc.errors(), source)) from None


def load_spec(path: str | Path) -> ExperimentSpec:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: experiment spec not found") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML ({getattr(exc, 'problem', exc)})") from None
    return spec_from_dict(data, str(path))


def base_config(spec: ExperimentSpec, spec_path: Path) -> Config:
    """The base config with the spec's overrides; `base` is found from the working folder or the spec's."""
    base = Path(spec.base)
    if not base.is_file() and (spec_path.parent / base).is_file():
        base = spec_path.parent / base
    if not base.is_file():
        raise ConfigError(f"{spec_path}: key 'base': config {spec.base} not found")
    return load_config(base, spec.overrides)


def prefix_config(base: dict, spec: ExperimentSpec, seed: int) -> Config:
    """A seed's prefix run: the base config stopped after the shared rounds."""
    overrides = [f"run.seed={seed}", f"run.rounds={spec.prefix_rounds}", f"run.name={PREFIX}"]
    return config_from_dict(apply_overrides(json.loads(json.dumps(base)), overrides), "experiment prefix")


def arm_overrides(spec: ExperimentSpec, base: dict, arm: str) -> list[str]:
    """What the arm's fork sets: its own overrides, and the base's rounds (the prefix stopped earlier)."""
    return [*spec.arms[arm], f"run.rounds={base['run']['rounds']}"]


def check_against_base(spec: ExperimentSpec, base: Config, source: str) -> None:
    """What the spec asks that the base config must allow: the rounds, and forks that keep the prefix."""
    from tutorloop.loop.fork import fork_config  # it loads the engine (Ray): only where runs are made

    rounds = base.run.rounds
    if spec.prefix_rounds >= rounds:
        raise ConfigError(
            f"{source}: key 'prefix_rounds': {spec.prefix_rounds} leaves no round for the arms "
            f"(the base runs rounds up to {rounds})"
        )
    for where, comparison in spec.comparisons():
        if comparison.round > rounds:
            raise ConfigError(f"{source}: key '{where}.round': {comparison.round} is after the last round ({rounds})")
        if comparison.split == "val" and not base.data.val_size:
            raise ConfigError(
                f"{source}: key '{where}.split': 'val' needs data.val_size > 0 in the base config or the overrides"
            )
    prefix = prefix_config(base.to_dict(), spec, spec.seeds[0])
    for arm in spec.arms:
        try:
            fork_config(prefix, arm_overrides(spec, base.to_dict(), arm), arm)
        except TutorloopError as exc:  # a bad override (ConfigError) or a fork refusal (RunError) names its key
            raise ConfigError(f"{source}: key 'arms.{arm}': {exc}") from None


def canonical(spec: ExperimentSpec, base: Config) -> tuple[str, dict]:
    """(content hash, canonical JSON): the spec and the resolved base config it runs."""
    document = {"spec": spec.model_dump(mode="json"), "config": base.to_dict()}
    return hashlib.sha256(json.dumps(document, sort_keys=True).encode()).hexdigest(), document
