"""Typed answers: the schema an answer must fit, shown to the root model and checked on the host.

``rlm.run(q, context, schema=S)`` takes a pydantic model class, a JSON-schema dict, or a plain
type (``int``, ``list[str]``, ``dict[str, float]``, a ``TypedDict`` ...). The model sets
``answer["content"]`` to a Python value; when it sets ``ready`` the engine checks the value with
:meth:`AnswerSchema.check`, and a mismatch goes back to the model as feedback instead of ending
the run.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import jsonschema
import pydantic

from ctxfold.errors import CtxfoldError

_MAX_SHOWN = 4000  # characters of the JSON schema shown in the system prompt
_MAX_ERRORS = 5  # validation errors told to the model at once


class SchemaMismatch(Exception):
    """The answer does not fit the schema; the message says why, in a few lines."""


@dataclass(frozen=True, slots=True)
class AnswerSchema:
    """What a typed answer must be. Make one with :meth:`of`."""

    json_schema: dict[str, Any]
    _adapter: pydantic.TypeAdapter[Any] | None
    _validator: jsonschema.protocols.Validator | None

    @classmethod
    def of(cls, spec: Any) -> AnswerSchema:
        """The schema for ``spec``: a pydantic model class, a plain type, or a JSON-schema dict.

        Raises:
            CtxfoldError: ``spec`` is none of these (one line).
        """
        if isinstance(spec, AnswerSchema):
            return spec
        if isinstance(spec, dict):
            try:
                validator_class = jsonschema.validators.validator_for(spec)
                validator_class.check_schema(spec)
            except jsonschema.exceptions.SchemaError as exc:
                raise CtxfoldError(f"schema is not a valid JSON schema: {exc.message}") from None
            return cls(spec, None, validator_class(spec))
        if spec is None or isinstance(spec, str | int | float | bool | list | tuple):
            raise CtxfoldError(
                "schema must be a type (int, list[str], a pydantic model ...) or a JSON-schema "
                f"dict, got {type(spec).__name__}"
            )
        try:
            adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(spec)
            shown = adapter.json_schema()
        except (pydantic.PydanticSchemaGenerationError, pydantic.PydanticUserError, TypeError):
            raise CtxfoldError(
                f"schema {spec!r:.80} is not a type pydantic can check, nor a JSON-schema dict"
            ) from None
        return cls(shown, adapter, None)

    def check(self, value: Any) -> Any:
        """The answer ``value`` as the schema has it (pydantic may convert ``"3"`` to ``3``,
        a dict to a model instance). Raises :class:`SchemaMismatch`."""
        if self._adapter is not None:
            try:
                return self._adapter.validate_python(value)
            except pydantic.ValidationError as exc:
                lines = [
                    f"- {'.'.join(str(p) for p in e['loc']) or 'the answer'}: {e['msg']}"
                    for e in exc.errors()[:_MAX_ERRORS]
                ]
                raise SchemaMismatch("\n".join(lines)) from None
        assert self._validator is not None
        errors = sorted(self._validator.iter_errors(value), key=lambda e: list(e.path))
        if errors:
            lines = [
                f"- {'.'.join(str(p) for p in e.path) or 'the answer'}: {e.message[:300]}"
                for e in errors[:_MAX_ERRORS]
            ]
            raise SchemaMismatch("\n".join(lines))
        return value

    def shown(self) -> str:
        """The JSON schema as the root model reads it (cut when very long)."""
        text = json.dumps(self.json_schema, ensure_ascii=False)
        return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + " ..."

    def as_json(self, value: Any) -> Any:
        """A checked value as plain JSON data (a pydantic model becomes a dict)."""
        if self._adapter is not None:
            return self._adapter.dump_python(value, mode="json")
        return value


def candidate(content: str, value_json: str | None) -> Any:
    """What the model's answer is as a value: the JSON it set, else its text, or the text's
    JSON when the text is JSON (a model may ``json.dumps`` its answer)."""
    if value_json is not None:
        try:
            return json.loads(value_json)
        except ValueError:
            pass
    stripped = content.strip()
    if stripped[:1] in ("{", "[", '"') or stripped in ("true", "false", "null"):
        try:
            return json.loads(stripped)
        except ValueError:
            return content
    return content
