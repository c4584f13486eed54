"""The PII filter stage: redact or refuse personal data before any model (or router) sees it.

Redaction replaces each entity with a placeholder (``[EMAIL_1]``). With
``reversible`` the placeholders of one request are mapped back to the
client's own values in the answer, streamed answers too (holding back at most
a placeholder's length). With ``responses`` the answers are scanned as well
and entities the model produced are redacted (holding back a short window).
``action: block`` refuses the request with a 400 that names the entity types,
never the values.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from dataclasses import dataclass
from typing import Any

from modelyard.config import Reader
from modelyard.errors import InvalidRequest
from modelyard.pipeline.slots import StageEnvironment
from modelyard.pipeline.text_streams import TextTransform, rewrite
from modelyard.pipeline.types import Handler, Request, Response, Stage
from modelyard.shaping import pii

PII_HEADER = "x-modelyard-pii"


@dataclass(frozen=True, slots=True)
class PiiOptions:
    action: str = "redact"  # redact | block
    entities: frozenset[str] = frozenset(pii.ENTITY_TYPES)
    reversible: bool = False
    responses: bool = False
    window_chars: int = 64


def parse_options(r: Reader) -> PiiOptions:
    d = PiiOptions()
    entities = r.names("entities") or pii.ENTITY_TYPES
    unknown = [e for e in entities if e not in pii.ENTITY_TYPES]
    if unknown:
        raise r.fail("entities", f"unknown entity type {', '.join(unknown)} (known: {', '.join(pii.ENTITY_TYPES)})")
    return PiiOptions(
        action=r.choice("action", ("redact", "block"), d.action), entities=frozenset(entities), reversible=r.boolean("reversible", d.reversible),
        responses=r.boolean("responses", d.responses), window_chars=r.integer("window_chars", d.window_chars, minimum=16),
    )


class PiiFilter:
    def __init__(self, options: PiiOptions) -> None:
        self.options = options

    def stage(self, next_handler: Handler) -> Handler:
        async def handle(request: Request) -> Response:
            redaction = pii.Redaction({}) if self.options.reversible else None
            found = self._filter_request(request, redaction)
            if found:
                request.response_headers[PII_HEADER] = "redacted " + ",".join(f"{k}:{v}" for k, v in sorted(found.items()))
            response = await next_handler(request)
            if self.options.responses or (redaction is not None and redaction.values):
                response.streams = [rewrite(s, self._transforms(redaction)) for s in response.streams]
            return response

        return handle

    def _transforms(self, redaction: pii.Redaction | None) -> list[TextTransform]:
        """Fresh transforms for one stream: scan the model's text first, then give the client's values back."""
        out: list[TextTransform] = []
        if self.options.responses:
            out.append(pii.StreamScanner(self.options.entities, self.options.window_chars))
        if redaction is not None and redaction.values:
            out.append(pii.StreamRestorer(redaction))
        return out

    def _filter_request(self, request: Request, redaction: pii.Redaction | None) -> Counter[str]:
        """Redact the request's texts in place (or refuse it); the entity counts found."""
        found: Counter[str] = Counter()

        def clean(text: str) -> str:
            findings = pii.find(text, self.options.entities)
            found.update(f.entity for f in findings)
            return pii.redact(text, findings, redaction) if findings else text

        if request.call is not None:
            call = request.call
            messages = tuple(_clean_message(m, clean) for m in call.messages)
            request.call = dataclasses.replace(call, messages=messages, prompt=clean(call.prompt) if call.prompt else call.prompt)
        request.inputs = [clean(t) for t in request.inputs]
        if found and self.options.action == "block":
            kinds = ", ".join(sorted(found))
            raise InvalidRequest(f"the request contains personal data ({kinds}); this deployment refuses it", code="pii_detected")
        return found


def _clean_message(message: dict[str, Any], clean: Any) -> dict[str, Any]:
    content = message.get("content")
    if isinstance(content, str):
        return {**message, "content": clean(content)}
    if isinstance(content, list):
        parts = [{**p, "text": clean(p["text"])} if isinstance(p, dict) and isinstance(p.get("text"), str) else p for p in content]
        return {**message, "content": parts}
    return message


class PiiFilterFactory:
    """The ``pii_filter`` stage kind."""

    default_slot = "before_route"

    def build(self, options: Reader, environment: StageEnvironment) -> Stage:
        return PiiFilter(parse_options(options)).stage
