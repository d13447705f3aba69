"""Every error the relay raises on purpose.

    RelayError
    ├── ConfigError               a setting is missing or invalid (names the variable)
    ├── StoreError                the outbox could not do what was asked
    │   └── StoreUnavailable      the store is locked, full, read-only or unreachable;
    │                             the caller may try again later
    ├── ProviderApiError          a reconciliation run could not finish with a provider's
    │   │                         API: unreachable, still failing after retries, an
    │   │                         unexpected answer, or more than a run may take
    │   ├── ProviderKeyRefused    it answered 401/403: the API key is wrong or revoked
    │   └── ProviderAnswerTooLarge  an answer exceeds RELAY_RECONCILE_MAX_ANSWER_BYTES
    └── HTTPError                 answered to a client as the spec's ErrorResponse
        ├── BadRequest            400 validation      (invalid JSON, not an object...)
        ├── Unauthorized          401 authentication  (missing/invalid signature or token)
        ├── Forbidden             403 forbidden
        ├── NotFound              404 not_found
        ├── MethodNotAllowed      405 validation
        ├── RequestTimeout        408 validation      (body arrived too slowly)
        ├── PayloadTooLarge       413 validation
        ├── UnsupportedMediaType  415 validation
        ├── RequestHeadTooLarge   431 validation      (too many or too large headers)
        ├── TooManyRequests       429 rate_limit      (with Retry-After)
        ├── BadGateway            502 internal        (the team's server could not be reached)
        ├── ServiceUnavailable    503 internal        (with Retry-After: try again soon)
        └── GatewayTimeout        504 internal        (the team's server did not answer in time)

HTTP-facing errors carry their status, `error_type` and `error_code`, so a route raises
them and one handler renders them; nothing else decides a status code.
"""

from __future__ import annotations

from typing import Any, ClassVar


class RelayError(Exception):
    """Base class of the relay's own errors."""


class ConfigError(RelayError):
    """Configuration is missing or invalid. The message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"{variable}: {problem}")


class StoreError(RelayError):
    """The outbox failed in a way retrying will not fix."""


class StoreUnavailable(StoreError):
    """The outbox cannot take the operation right now (locked, full, read-only, down)."""


class ProviderApiError(RelayError):
    """A provider's API did not answer what reconciliation asked, or had more for it than
    one run may take. The message says what happened and which variable or service to
    check."""


class ProviderKeyRefused(ProviderApiError):
    """The provider's API refused the configured API key (401 or 403)."""


class ProviderAnswerTooLarge(ProviderApiError):
    """An answer of the provider's API is larger than RELAY_RECONCILE_MAX_ANSWER_BYTES:
    asking again brings the same, so it is not retried (a page is asked for with fewer
    calls instead)."""


class HTTPError(RelayError):
    status_code: ClassVar[int] = 500
    error_type: ClassVar[str] = "internal"
    #: A class default that one instance may override (`error_code=`).
    error_code: str = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        error_code: str | None = None,
        parameter: str | None = None,
        details: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if error_code is not None:
            self.error_code = error_code
        self.parameter = parameter
        self.details = details
        self.headers = headers or {}

    def to_response_body(self, request_id: str | None) -> dict[str, Any]:
        """The spec's `ErrorResponse` object."""
        body: dict[str, Any] = {
            "error_type": self.error_type,
            "error_code": self.error_code,
            "message": self.message,
        }
        if self.parameter is not None:
            body["parameter"] = self.parameter
        if self.details:
            body["details"] = self.details
        if request_id is not None:
            body["request_id"] = request_id
        return body


class BadRequest(HTTPError):
    status_code = 400
    error_type = "validation"
    error_code = "invalid_request"


class Unauthorized(HTTPError):
    status_code = 401
    error_type = "authentication"
    error_code = "unauthorized"


class Forbidden(HTTPError):
    status_code = 403
    error_type = "forbidden"
    error_code = "forbidden"


class NotFound(HTTPError):
    status_code = 404
    error_type = "not_found"
    error_code = "resource_not_found"


class MethodNotAllowed(HTTPError):
    status_code = 405
    error_type = "validation"
    error_code = "method_not_allowed"


class RequestTimeout(HTTPError):
    status_code = 408
    error_type = "validation"
    error_code = "request_timeout"


class PayloadTooLarge(HTTPError):
    status_code = 413
    error_type = "validation"
    error_code = "payload_too_large"


class UnsupportedMediaType(HTTPError):
    status_code = 415
    error_type = "validation"
    error_code = "unsupported_media_type"


class RequestHeadTooLarge(HTTPError):
    status_code = 431
    error_type = "validation"
    error_code = "headers_too_large"


class TooManyRequests(HTTPError):
    status_code = 429
    error_type = "rate_limit"
    error_code = "rate_limited"

    def __init__(self, message: str, *, retry_after_seconds: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(retry_after_seconds))


class BadGateway(HTTPError):
    status_code = 502
    error_type = "internal"
    error_code = "bad_gateway"


class GatewayTimeout(HTTPError):
    status_code = 504
    error_type = "internal"
    error_code = "gateway_timeout"


class ServiceUnavailable(HTTPError):
    status_code = 503
    error_type = "internal"
    error_code = "service_unavailable"

    def __init__(self, message: str, *, retry_after_seconds: int, **kwargs: Any) -> None:
        super().__init__(message, **kwargs)
        self.headers.setdefault("Retry-After", str(retry_after_seconds))
