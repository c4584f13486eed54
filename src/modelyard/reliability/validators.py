"""Check a final output against the request's response_format and an alias's validators."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import Any

import jsonschema

from modelyard.config.schema import ValidatorConfig


def response_format_validators(response_format: Mapping[str, Any] | None) -> tuple[ValidatorConfig, ...]:
    """The checks implied by ``response_format`` (json_object: parses to an object; json_schema: validates)."""
    if not response_format:
        return ()
    kind = response_format.get("type")
    if kind == "json_object":
        return (ValidatorConfig(kind="json_schema", schema={"type": "object"}),)
    if kind == "json_schema":
        schema = (response_format.get("json_schema") or {}).get("schema") or {}
        return (ValidatorConfig(kind="json_schema", schema=schema),)
    return ()


def first_violation(text: str, validators: Iterable[ValidatorConfig]) -> str | None:
    """A sentence saying what is wrong with ``text``, or None when every check passes."""
    for v in validators:
        if v.kind == "max_length" and len(text) > v.max_chars:
            return f"the answer is {len(text)} characters; at most {v.max_chars} are allowed"
        if v.kind == "regex" and re.search(v.pattern, text) is None:
            return f"the answer must match the regular expression {v.pattern!r}"
        if v.kind == "json_schema":
            problem = _json_problem(text, v.schema or {})
            if problem:
                return problem
    return None


def _json_problem(text: str, schema: Mapping[str, Any]) -> str | None:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return f"the answer is not valid JSON ({exc.msg} at position {exc.pos})"
    try:
        jsonschema.validate(data, dict(schema))
    except jsonschema.ValidationError as exc:
        where = "/".join(str(p) for p in exc.absolute_path) or "the top level"
        return f"the JSON does not match the schema at {where}: {exc.message}"
    except jsonschema.SchemaError as exc:
        return f"the schema itself is invalid: {exc.message}"
    return None


def mean_logprob(logprobs: Iterable[float]) -> float | None:
    values = list(logprobs)
    return sum(values) / len(values) if values else None
