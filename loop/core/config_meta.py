"""How the config evolves, declared on its fields rather than in lists kept by hand.

A field carries marks in `Field(..., json_schema_extra=MARK)` (they also show in the JSON schema):

- ADDED_LATER: the key came after runs were recorded; while at its default it is left out of the
  stored config, so those runs keep their config fingerprint (resume, fork, compare).
- RESUME_SAFE: the key may change between a kill and `tutorloop resume` without invalidating stored
  work; on a section it covers every key in it.
- FORK_FIXED: a fork keeps the parent's value (its inherited rounds were made with it), except for the
  keys under a FORK_FREE field inside it.

Marks combine with `|` (RESUME_SAFE | ADDED_LATER). `marked_keys` derives a key list by walking the fields.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel, ConfigDict, SerializerFunctionWrapHandler, model_serializer
from pydantic.fields import FieldInfo

ADDED_LATER: dict[str, Any] = {"added_later": True}
RESUME_SAFE: dict[str, Any] = {"resume_safe": True}
FORK_FIXED: dict[str, Any] = {"fork": "fixed"}
FORK_FREE: dict[str, Any] = {"fork": "free"}


class Section(BaseModel):
    """A config section: unknown keys are errors, and ADDED_LATER keys at their default are not stored."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    @model_serializer(mode="wrap")
    def _without_later_keys_at_default(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data = handler(self)
        fields = type(self).model_fields
        for name in added_later_fields(type(self)):
            if getattr(self, name) == fields[name].default:
                data.pop(name, None)
        return data


def _marks(field: FieldInfo) -> dict[str, Any]:
    extra = field.json_schema_extra
    return extra if isinstance(extra, dict) else {}


@cache
def added_later_fields(model: type[BaseModel]) -> tuple[str, ...]:
    """Names of the model's own fields marked ADDED_LATER."""
    return tuple(name for name, field in model.model_fields.items() if _marks(field).get("added_later"))


def _walk_marked(model: type[BaseModel], mark: dict[str, Any], prefix: str) -> list[str]:
    ((mark_name, mark_value),) = mark.items()
    keys = []
    for name, field in model.model_fields.items():
        if _marks(field).get(mark_name) == mark_value:
            keys.append(prefix + name)
        # Sections nest directly; keys inside lists (teacher.teachers) have no dotted key to mark.
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            keys.extend(_walk_marked(field.annotation, mark, f"{prefix}{name}."))
    return keys


def marked_keys(model: type[BaseModel], mark: dict[str, Any]) -> tuple[str, ...]:
    """Dotted keys of the fields carrying `mark`, whole sections before the keys inside sections."""
    return tuple(sorted(_walk_marked(model, mark, ""), key=lambda key: key.count(".")))


def changed_keys(old: dict, new: dict, prefix: str = "") -> set[str]:
    """Dotted keys whose values differ between two config dicts."""
    keys = set()
    for key in set(old) | set(new):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            keys |= changed_keys(a, b, f"{prefix}{key}.")
        elif a != b:
            keys.add(f"{prefix}{key}")
    return keys
