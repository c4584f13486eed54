"""The one error tree of modelyard.

Every failure a client can see is a :class:`ModelyardError`. Backends translate
their own exceptions (httpx, llama.cpp, torch) into these at their boundary, so
nothing above a backend ever handles a third-party exception. The API layer
renders any of them in OpenAI's error shape with :attr:`ModelyardError.status`.

    ModelyardError (500 server_error)
    ├── InvalidRequest (400, names the parameter)
    │   ├── ContextWindowExceeded (400, code context_length_exceeded)
    │   └── SessionBudgetExceeded (400, code session_budget_exceeded, not retried)
    ├── AuthenticationFailed (401)
    ├── NotFound (404)
    │   └── ModelNotFound (404, code model_not_found)
    ├── PermissionDenied (403)
    ├── MethodNotAllowed (405)
    ├── PayloadTooLarge (413)
    ├── Overloaded (429, Retry-After)
    │   └── RateLimited (429, code rate_limit_exceeded)
    ├── BudgetExceeded (429, type insufficient_quota)
    ├── UpstreamError (502)            retryable
    │   └── OutputRejected (502, code output_validation_failed, not retried)
    ├── NotReady (503)                 retryable
    └── UpstreamTimeout (504)          retryable
"""

from __future__ import annotations


class ModelyardError(Exception):
    """Base of every error modelyard reports to a client."""

    status: int = 500
    error_type: str = "server_error"
    default_code: str | None = None
    retryable: bool = False

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code if code is not None else self.default_code
        self.retry_after = retry_after

    def to_body(self) -> dict[str, object]:
        """The error in OpenAI's JSON shape."""
        return {
            "error": {
                "message": self.message,
                "type": self.error_type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(ModelyardError):
    """The request is malformed or a parameter is out of range."""

    status = 400
    error_type = "invalid_request_error"


class ContextWindowExceeded(InvalidRequest):
    """The prompt plus requested completion do not fit the model's window."""

    default_code = "context_length_exceeded"


class SessionBudgetExceeded(InvalidRequest):
    """The agent session has used its budget (dollars, tokens, calls or time) and is stopped.

    A 400, not a 429: SDKs retry 429s, and this answer will not change on a retry.
    """

    default_code = "session_budget_exceeded"


class AuthenticationFailed(ModelyardError):
    """Missing or invalid API key."""

    status = 401
    error_type = "authentication_error"
    default_code = "invalid_api_key"


class NotFound(ModelyardError):
    """The addressed resource does not exist (or is not visible to the caller)."""

    status = 404
    error_type = "not_found_error"


class ModelNotFound(NotFound):
    """The requested model or alias is not in the fleet."""

    error_type = "invalid_request_error"
    default_code = "model_not_found"


class MethodNotAllowed(ModelyardError):
    """The path exists but not for this HTTP method."""

    status = 405
    error_type = "invalid_request_error"
    default_code = "method_not_allowed"


class PayloadTooLarge(ModelyardError):
    """The request body exceeds the configured limit."""

    status = 413
    error_type = "invalid_request_error"
    default_code = "request_too_large"


class Overloaded(ModelyardError):
    """No capacity to take the request now; the client should retry later."""

    status = 429
    error_type = "rate_limit_error"
    default_code = "overloaded"
    retryable = True


class RateLimited(Overloaded):
    """The key or tenant used up its requests or tokens per minute."""

    default_code = "rate_limit_exceeded"
    retryable = False  # another deployment would not help


class BudgetExceeded(ModelyardError):
    """The tenant's budget cannot cover this request's worst-case cost."""

    status = 429
    error_type = "insufficient_quota"
    default_code = "budget_exceeded"


class PermissionDenied(ModelyardError):
    """The key may not use this model or workload class."""

    status = 403
    error_type = "permission_error"
    default_code = "model_not_allowed"


class UpstreamError(ModelyardError):
    """A backend failed (connection refused, 5xx, worker died)."""

    status = 502
    error_type = "upstream_error"
    retryable = True


class OutputRejected(UpstreamError):
    """No model produced an answer that passes the request's checks (validators, JSON schema)."""

    default_code = "output_validation_failed"
    retryable = False


class NotReady(ModelyardError):
    """The fleet (or the chosen deployment) is not ready to serve."""

    status = 503
    error_type = "service_unavailable"
    retryable = True


class UpstreamTimeout(ModelyardError):
    """A backend did not answer within its timeout."""

    status = 504
    error_type = "timeout_error"
    retryable = True
