"""HTTP handlers for ``/v1/files`` and ``/v1/batches`` (lines run in :mod:`modelyard.api.batch_lines`)."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.datastructures import UploadFile
from starlette.requests import Request as HTTPRequest
from starlette.responses import Response as HTTPResponse
from starlette.routing import Route

from modelyard.api import parse
from modelyard.api.responses import JSONResponse
from modelyard.errors import InvalidRequest, PayloadTooLarge
from modelyard.pipeline.batches import BatchOwner, BatchService, file_object

DEFAULT_TENANT = "default"


@dataclass(frozen=True, slots=True)
class BatchRoutes:
    service: BatchService
    max_body_bytes: int

    def tenant(self, http: HTTPRequest) -> str:
        return http.scope.get("state", {}).get("tenant", DEFAULT_TENANT)

    def owner(self, http: HTTPRequest) -> BatchOwner:
        """The tenant and API key a new batch's lines will run as."""
        return BatchOwner(self.tenant(http), http.scope.get("state", {}).get("api_key_id"))

    async def upload(self, http: HTTPRequest) -> HTTPResponse:
        declared = http.headers.get("content-length")
        limit = self.service.max_file_bytes
        if declared and declared.isdigit() and int(declared) > limit + 64 * 1024:
            raise PayloadTooLarge(f"The upload is {declared} bytes; files may be at most {limit} bytes")
        try:
            form = await http.form(max_files=1, max_fields=8, max_part_size=limit + 1)
        except Exception as exc:  # python-multipart reports malformed bodies and oversized parts this way
            if "size" in str(exc).lower() or "large" in str(exc).lower():
                raise PayloadTooLarge(f"files may be at most {limit} bytes") from None
            raise InvalidRequest(f"expected a multipart/form-data body with 'file' and 'purpose' ({exc})") from None
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("Missing required parameter: 'file'", param="file")
        if not isinstance(purpose, str):
            raise InvalidRequest("Missing required parameter: 'purpose'", param="purpose")
        content = await upload.read()
        if len(content) > limit:
            raise PayloadTooLarge(f"the file is {len(content)} bytes; files may be at most {limit} bytes")
        return JSONResponse(await self.service.upload(self.tenant(http), purpose, upload.filename or "upload.jsonl", content))

    async def list_files(self, http: HTTPRequest) -> HTTPResponse:
        purpose = http.query_params.get("purpose")
        limit = _limit(http, 10_000)
        rows = await self.service.store.list_files(self.tenant(http), purpose, limit)
        return JSONResponse({"object": "list", "data": [file_object(r) for r in rows], "has_more": False})

    async def get_file(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(file_object(await self.service.file(self.tenant(http), http.path_params["file_id"])))

    async def file_content(self, http: HTTPRequest) -> HTTPResponse:
        content = await self.service.content(self.tenant(http), http.path_params["file_id"])
        return HTTPResponse(content, media_type="application/jsonl")

    async def delete_file(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(await self.service.delete(self.tenant(http), http.path_params["file_id"]))

    async def create_batch(self, http: HTTPRequest) -> HTTPResponse:
        body = parse.parse_json(await http.body())
        return JSONResponse(await self.service.create(self.owner(http), body))

    async def get_batch(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(await self.service.get(self.tenant(http), http.path_params["batch_id"]))

    async def list_batches(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(await self.service.list(self.tenant(http), _limit(http, 100), http.query_params.get("after")))

    async def cancel_batch(self, http: HTTPRequest) -> HTTPResponse:
        return JSONResponse(await self.service.cancel(self.tenant(http), http.path_params["batch_id"]))

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.upload, methods=["POST"]),
            Route("/v1/files", self.list_files, methods=["GET"]),
            Route("/v1/files/{file_id}", self.get_file, methods=["GET"]),
            Route("/v1/files/{file_id}", self.delete_file, methods=["DELETE"]),
            Route("/v1/files/{file_id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.create_batch, methods=["POST"]),
            Route("/v1/batches", self.list_batches, methods=["GET"]),
            Route("/v1/batches/{batch_id}", self.get_batch, methods=["GET"]),
            Route("/v1/batches/{batch_id}/cancel", self.cancel_batch, methods=["POST"]),
        ]


def _limit(http: HTTPRequest, maximum: int) -> int:
    raw = http.query_params.get("limit", "20")
    if not raw.isdigit() or not 1 <= int(raw) <= maximum:
        raise InvalidRequest(f"'limit' must be an integer between 1 and {maximum}", param="limit")
    return int(raw)
