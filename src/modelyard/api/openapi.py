"""The API's OpenAPI 3.1 document, served at ``GET /openapi.json``.

Written by hand from the parsers and renderers (``parse.py``, ``render.py``,
``batches.py``) rather than generated, so it says what the server accepts and
answers; a test checks that every route the app serves is in it, that it is a
valid OpenAPI 3.1 document, and that live responses match its schemas.
"""

from __future__ import annotations

from typing import Any

JSON = "application/json"


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {"anyOf": [schema, {"type": "null"}]}


def _obj(required: list[str], properties: dict[str, Any], extra: bool = True) -> dict[str, Any]:
    return {"type": "object", "required": required, "properties": properties, "additionalProperties": extra}


STRING, INTEGER, NUMBER, BOOLEAN = {"type": "string"}, {"type": "integer"}, {"type": "number"}, {"type": "boolean"}
USAGE = _obj(["prompt_tokens", "completion_tokens", "total_tokens"], {k: INTEGER for k in ("prompt_tokens", "completion_tokens", "total_tokens")})
TEXT_PART = _obj(["type", "text"], {"type": {"const": "text"}, "text": STRING})
MESSAGE = _obj(["role"], {
    "role": {"enum": ["system", "developer", "user", "assistant", "tool", "function"]},
    "content": _nullable({"anyOf": [STRING, {"type": "array", "items": TEXT_PART}]}),
    "name": STRING, "tool_calls": {"type": "array", "items": {"type": "object"}}, "tool_call_id": STRING,
})
SAMPLING = {
    "max_tokens": {"type": "integer", "minimum": 1}, "max_completion_tokens": {"type": "integer", "minimum": 1},
    "temperature": {"type": "number", "minimum": 0, "maximum": 2}, "top_p": {"type": "number", "minimum": 0, "maximum": 1},
    "frequency_penalty": {"type": "number", "minimum": -2, "maximum": 2}, "presence_penalty": {"type": "number", "minimum": -2, "maximum": 2},
    "stop": {"anyOf": [STRING, {"type": "array", "items": STRING, "maxItems": 4}, {"type": "null"}]},
    "seed": INTEGER, "n": {"type": "integer", "minimum": 1, "maximum": 8}, "user": STRING, "stream": BOOLEAN,
    "stream_options": _obj([], {"include_usage": BOOLEAN}),
}
TOOL = _obj(["type", "function"], {"type": {"const": "function"}, "function": _obj(["name"], {"name": STRING, "description": STRING, "parameters": {"type": "object"}})})
CHAT_REQUEST = _obj(["model", "messages"], {
    "model": STRING, "messages": {"type": "array", "items": MESSAGE, "minItems": 1}, **SAMPLING,
    "logprobs": BOOLEAN, "top_logprobs": {"type": "integer", "minimum": 0, "maximum": 20},
    "response_format": _obj(["type"], {"type": {"enum": ["text", "json_object", "json_schema"]}, "json_schema": {"type": "object"}}),
    "tools": {"type": "array", "items": TOOL},
    "tool_choice": {"anyOf": [{"enum": ["none", "auto", "required"]}, {"type": "object"}]},
})
COMPLETION_REQUEST = _obj(["model", "prompt"], {
    "model": STRING, "prompt": {"anyOf": [STRING, {"type": "array", "items": STRING, "minItems": 1, "maxItems": 1}]}, **SAMPLING,
    "logprobs": {"type": "integer", "minimum": 0, "maximum": 5},
})
EMBEDDING_REQUEST = _obj(["model", "input"], {
    "model": STRING, "input": {"anyOf": [STRING, {"type": "array", "items": STRING, "minItems": 1, "maxItems": 2048}]},
    "encoding_format": {"enum": ["float", "base64"]}, "user": STRING,
})
CHAT_COMPLETION = _obj(["id", "object", "created", "model", "choices", "usage"], {
    "id": STRING, "object": {"const": "chat.completion"}, "created": INTEGER, "model": STRING, "usage": USAGE,
    "system_fingerprint": {"type": "null"},
    "choices": {"type": "array", "items": _obj(["index", "message", "finish_reason"], {
        "index": INTEGER, "finish_reason": STRING, "logprobs": _nullable({"type": "object"}),
        "message": _obj(["role", "content"], {"role": {"const": "assistant"}, "content": _nullable(STRING), "tool_calls": {"type": "array"}}),
    })},
})
COMPLETION = _obj(["id", "object", "created", "model", "choices", "usage"], {
    "id": STRING, "object": {"const": "text_completion"}, "created": INTEGER, "model": STRING, "usage": USAGE,
    "choices": {"type": "array", "items": _obj(["index", "text", "finish_reason"], {
        "index": INTEGER, "text": STRING, "finish_reason": STRING, "logprobs": _nullable({"type": "object"}),
    })},
})
EMBEDDINGS = _obj(["object", "data", "model", "usage"], {
    "object": {"const": "list"}, "model": STRING,
    "usage": _obj(["prompt_tokens", "total_tokens"], {"prompt_tokens": INTEGER, "total_tokens": INTEGER}),
    "data": {"type": "array", "items": _obj(["object", "index", "embedding"], {
        "object": {"const": "embedding"}, "index": INTEGER, "embedding": {"anyOf": [{"type": "array", "items": NUMBER}, STRING]},
    })},
})
MODEL = _obj(["id", "object", "created", "owned_by"], {"id": STRING, "object": {"const": "model"}, "created": INTEGER, "owned_by": STRING, "kind": STRING, "description": STRING})
FILE = _obj(["id", "object", "bytes", "created_at", "filename", "purpose"], {
    "id": STRING, "object": {"const": "file"}, "bytes": INTEGER, "created_at": INTEGER, "filename": STRING, "purpose": STRING,
    "status": STRING, "status_details": {"type": "null"},
})
TIMESTAMPS = ("created_at", "in_progress_at", "expires_at", "finalizing_at", "completed_at", "failed_at", "expired_at", "cancelling_at", "cancelled_at")
BATCH = _obj(["id", "object", "endpoint", "input_file_id", "completion_window", "status", "created_at", "request_counts"], {
    "id": STRING, "object": {"const": "batch"}, "endpoint": STRING, "input_file_id": STRING, "completion_window": STRING,
    "status": {"enum": ["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling", "cancelled"]},
    "output_file_id": _nullable(STRING), "error_file_id": _nullable(STRING), "errors": _nullable({"type": "object"}),
    **{t: _nullable(INTEGER) for t in TIMESTAMPS},
    "request_counts": _obj(["total", "completed", "failed"], {"total": INTEGER, "completed": INTEGER, "failed": INTEGER}),
    "metadata": _nullable({"type": "object", "additionalProperties": STRING}),
})
BATCH_REQUEST = _obj(["input_file_id", "endpoint", "completion_window"], {
    "input_file_id": STRING, "endpoint": {"enum": ["/v1/chat/completions", "/v1/completions", "/v1/embeddings"]},
    "completion_window": {"const": "24h"}, "metadata": _nullable({"type": "object", "maxProperties": 16, "additionalProperties": STRING}),
})
ERROR = _obj(["error"], {"error": _obj(["message", "type", "param", "code"], {
    "message": STRING, "type": STRING, "param": _nullable(STRING), "code": _nullable(STRING),
})}, extra=False)
SCHEMAS: dict[str, dict[str, Any]] = {
    "Error": ERROR, "Usage": USAGE, "ChatCompletionRequest": CHAT_REQUEST, "ChatCompletion": CHAT_COMPLETION,
    "CompletionRequest": COMPLETION_REQUEST, "Completion": COMPLETION, "EmbeddingRequest": EMBEDDING_REQUEST, "Embeddings": EMBEDDINGS,
    "Model": MODEL, "ModelList": _obj(["object", "data"], {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("Model")}}),
    "File": FILE, "FileList": _obj(["object", "data"], {"object": {"const": "list"}, "data": {"type": "array", "items": _ref("File")}, "has_more": BOOLEAN}),
    "FileDeleted": _obj(["id", "object", "deleted"], {"id": STRING, "object": {"const": "file"}, "deleted": BOOLEAN}),
    "Batch": BATCH, "BatchRequest": BATCH_REQUEST,
    "BatchList": _obj(["object", "data", "has_more"], {
        "object": {"const": "list"}, "data": {"type": "array", "items": _ref("Batch")},
        "first_id": _nullable(STRING), "last_id": _nullable(STRING), "has_more": BOOLEAN,
    }),
    "Status": _obj(["status"], {"status": STRING}),
    "AnthropicMessageRequest": _obj(["model", "max_tokens", "messages"], {
        "model": STRING, "max_tokens": {"type": "integer", "minimum": 1}, "system": {"anyOf": [STRING, {"type": "array", "items": TEXT_PART}]},
        "messages": {"type": "array", "minItems": 1, "items": _obj(["role", "content"], {"role": {"enum": ["user", "assistant"]},
                     "content": {"anyOf": [STRING, {"type": "array", "items": {"type": "object"}}]}})},
        "stop_sequences": {"type": "array", "items": STRING}, "temperature": {"type": "number", "minimum": 0, "maximum": 1},
        "top_p": {"type": "number", "minimum": 0, "maximum": 1}, "stream": BOOLEAN, "tools": {"type": "array", "items": {"type": "object"}},
        "tool_choice": {"type": "object"}, "metadata": {"type": "object"},
    }),
    "AnthropicMessage": _obj(["id", "type", "role", "model", "content", "stop_reason", "usage"], {
        "id": STRING, "type": {"const": "message"}, "role": {"const": "assistant"}, "model": STRING,
        "content": {"type": "array", "items": {"type": "object"}}, "stop_reason": {"enum": ["end_turn", "max_tokens", "stop_sequence", "tool_use"]},
        "stop_sequence": _nullable(STRING), "usage": _obj(["input_tokens", "output_tokens"], {"input_tokens": INTEGER, "output_tokens": INTEGER}),
    }),
    "ResponseRequest": _obj(["model", "input"], {
        "model": STRING, "input": {"anyOf": [STRING, {"type": "array", "items": {"type": "object"}}]}, "instructions": _nullable(STRING),
        "tools": {"type": "array", "items": {"type": "object"}}, "tool_choice": {}, "stream": BOOLEAN, "store": BOOLEAN,
        "previous_response_id": _nullable(STRING), "max_output_tokens": {"type": "integer", "minimum": 1},
        "temperature": {"type": "number", "minimum": 0, "maximum": 2}, "top_p": {"type": "number", "minimum": 0, "maximum": 1},
        "text": {"type": "object"}, "metadata": {"type": "object"}, "user": STRING,
    }),
    "Response": _obj(["id", "object", "created_at", "status", "model", "output", "tools", "tool_choice", "parallel_tool_calls"], {
        "id": STRING, "object": {"const": "response"}, "created_at": INTEGER, "status": {"enum": ["completed", "incomplete"]}, "model": STRING,
        "output": {"type": "array", "items": {"type": "object"}}, "usage": {"type": "object"}, "tools": {"type": "array"}, "tool_choice": {},
        "parallel_tool_calls": BOOLEAN, "previous_response_id": _nullable(STRING), "instructions": _nullable(STRING),
    }),
    "AnthropicTokenCount": _obj(["input_tokens"], {"input_tokens": INTEGER}),
    "AnthropicError": _obj(["type", "error"], {"type": {"const": "error"}, "error": _obj(["type", "message"], {"type": STRING, "message": STRING, "code": STRING})}),
    "AdminObject": {"type": "object", "description": "Admin API object; see docs/economics.md"},
}
# Every error status a route may answer, in OpenAI's error shape.
ERRORS = {
    "400": "Invalid request (the parameter is named in error.param)", "401": "Missing or wrong API key", "403": "The key may not use this model",
    "404": "Unknown model, file, batch or URL", "405": "Method not allowed", "413": "Body too large",
    "429": "Rate limit, budget (insufficient_quota) or overload; see Retry-After", "500": "Internal error (no stack trace is sent)",
    "502": "Upstream failure", "503": "Not ready", "504": "Upstream timeout",
}


def _json_content(schema: dict[str, Any]) -> dict[str, Any]:
    return {JSON: {"schema": schema}}


def _operation(summary: str, ok: dict[str, Any] | None, request: dict[str, Any] | None = None, status: str = "200", **extra: Any) -> dict[str, Any]:
    responses: dict[str, Any] = {status: {"description": "OK", **({"content": _json_content(ok)} if ok else {})}}
    responses |= {code: {"description": text, "content": _json_content(_ref("Error"))} for code, text in ERRORS.items()}
    operation: dict[str, Any] = {"summary": summary, "responses": responses, **extra}
    if request is not None:
        operation["requestBody"] = {"required": True, "content": request}
    return operation


def _anthropic(operation: dict[str, Any]) -> dict[str, Any]:
    """Errors of the Messages API routes come in Anthropic's shape."""
    for code, response in operation["responses"].items():
        if code != "200":
            response["content"] = _json_content(_ref("AnthropicError"))
    return operation


def _path_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": STRING}


def _query(name: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _inference_paths() -> dict[str, Any]:
    stream = {"text/event-stream": {"schema": STRING}}
    chat = _operation("Chat completion (stream: true answers server-sent events)", _ref("ChatCompletion"), _json_content(_ref("ChatCompletionRequest")))
    chat["responses"]["200"]["content"] |= stream
    completion = _operation("Text completion", _ref("Completion"), _json_content(_ref("CompletionRequest")))
    completion["responses"]["200"]["content"] |= stream
    messages = _anthropic(_operation("Anthropic Messages API (stream: true answers its server-sent events)", _ref("AnthropicMessage"),
                                     _json_content(_ref("AnthropicMessageRequest"))))
    messages["responses"]["200"]["content"] |= stream
    responses = _operation("OpenAI Responses API (stream: true answers response.* server-sent events)", _ref("Response"), _json_content(_ref("ResponseRequest")))
    responses["responses"]["200"]["content"] |= stream
    return {
        "/v1/chat/completions": {"post": chat},
        "/v1/completions": {"post": completion},
        "/v1/embeddings": {"post": _operation("Embeddings", _ref("Embeddings"), _json_content(_ref("EmbeddingRequest")))},
        "/v1/messages": {"post": messages},
        "/v1/messages/count_tokens": {"post": _anthropic(_operation("Anthropic Messages API: count a prompt's tokens", _ref("AnthropicTokenCount"),
                                                                     _json_content(_ref("AnthropicMessageRequest"))))},
        "/v1/responses": {"post": responses},
        "/v1/models": {"get": _operation("List models and aliases", _ref("ModelList"))},
        "/v1/models/{model_id}": {"get": _operation("One model or alias", _ref("Model"), parameters=[_path_param("model_id")])},
    }


def _batch_paths() -> dict[str, Any]:
    upload = {"multipart/form-data": {"schema": _obj(["file", "purpose"], {"file": {"type": "string", "contentMediaType": "application/octet-stream"}, "purpose": {"const": "batch"}})}}
    file_id, batch_id = [_path_param("file_id")], [_path_param("batch_id")]
    return {
        "/v1/files": {
            "post": _operation("Upload a JSONL batch input file", _ref("File"), upload),
            "get": _operation("List files", _ref("FileList"), parameters=[_query("purpose", STRING), _query("limit", {"type": "integer", "minimum": 1, "maximum": 10000})]),
        },
        "/v1/files/{file_id}": {
            "get": _operation("A file", _ref("File"), parameters=file_id),
            "delete": _operation("Delete a file", _ref("FileDeleted"), parameters=file_id),
        },
        "/v1/files/{file_id}/content": {"get": _operation("A file's content (JSONL)", None, parameters=file_id)},
        "/v1/batches": {
            "post": _operation("Create a batch", _ref("Batch"), _json_content(_ref("BatchRequest"))),
            "get": _operation("List batches", _ref("BatchList"), parameters=[_query("limit", {"type": "integer", "minimum": 1, "maximum": 100}), _query("after", STRING)]),
        },
        "/v1/batches/{batch_id}": {"get": _operation("A batch", _ref("Batch"), parameters=batch_id)},
        "/v1/batches/{batch_id}/cancel": {"post": _operation("Cancel a batch", _ref("Batch"), parameters=batch_id)},
    }


def _service_paths() -> dict[str, Any]:
    admin = _ref("AdminObject")
    tenant, key = [_path_param("tenant")], [_path_param("key_id")]
    body = _json_content({"type": "object"})
    return {
        "/healthz": {"get": _operation("Liveness", _ref("Status"))},
        "/readyz": {"get": _operation("Readiness (503 until the fleet is ready)", _ref("Status"))},
        "/metrics": {"get": _operation("Prometheus metrics (text exposition format)", None)},
        "/openapi.json": {"get": _operation("This document", {"type": "object"})},
        "/ui": {"get": _operation("The dashboard page (HTML)", None)},
        "/admin/fleet": {"get": _operation("Deployments, workers, breakers, scheduler", admin)},
        "/admin/breakers": {"get": _operation("Circuit breakers", admin)},
        "/admin/usage": {"get": _operation("Ledger aggregates (JSON or CSV)", admin, parameters=[
            _query("group_by", STRING), _query("since", STRING), _query("until", STRING), _query("format", {"enum": ["json", "csv"]})])},
        "/admin/dashboard": {"get": _operation("The dashboard's data", admin)},
        "/admin/sessions": {"get": _operation("Recent agent sessions: steps, tokens, cost, tool calls", admin, parameters=[
            _query("limit", {"type": "integer", "minimum": 1, "maximum": 500}), _query("tenant", STRING)])},
        "/admin/sessions/{session_id}": {"get": _operation("One session's steps, tool calls and tool results", admin, parameters=[
            _path_param("session_id"), _query("tenant", STRING)])},
        "/admin/tenants": {"get": _operation("List tenants", admin), "post": _operation("Create a tenant", admin, body, status="201")},
        "/admin/tenants/{tenant}/budget": {"post": _operation("Set a tenant's budget", admin, body, parameters=tenant)},
        "/admin/tenants/{tenant}/plan": {"post": _operation("Set a tenant's price plan", admin, body, parameters=tenant)},
        "/admin/keys": {"get": _operation("List API keys", admin), "post": _operation("Create an API key (shown once)", admin, body, status="201")},
        "/admin/keys/{key_id}/revoke": {"post": _operation("Revoke an API key", admin, parameters=key)},
    }


def openapi_document(version: str) -> dict[str, Any]:
    """The whole document; ``version`` is the package version."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "modelyard", "version": version, "description": "One OpenAI-compatible endpoint in front of a fleet of models."},
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}],
        "paths": _inference_paths() | _batch_paths() | _service_paths(),
        "components": {"schemas": SCHEMAS, "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}}},
    }
