"""Google Cloud KMS over its REST API with treq, for envelope encryption of the data key.

Only two calls exist (``:encrypt`` and ``:decrypt``) and the daemon makes one of them per start,
so a REST client with retries is all we need; the gRPC client library would bring its own event
loop and threads. The bearer token comes from google-auth (Application Default Credentials),
created and refreshed in a thread because google-auth does blocking HTTP.
"""

from __future__ import annotations

import base64
import binascii
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any

import orjson
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread
from twisted.logger import Logger

from keycast_tw.store.errors import KmsError

DEFAULT_API_BASE = "https://cloudkms.googleapis.com"
KMS_SCOPE = "https://www.googleapis.com/auth/cloudkms"
_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

ToThread = Callable[..., "Deferred[Any]"]


def kms_key_name(project: str, location: str, key_ring: str, key: str) -> str:
    """The resource name Cloud KMS expects, from the original's four settings."""
    return f"projects/{project}/locations/{location}/keyRings/{key_ring}/cryptoKeys/{key}"


class GcpKms:
    """Encrypt/decrypt small secrets with one Cloud KMS key; retries 429/5xx and network errors.

    Seams (keyword arguments): ``credentials`` (anything with ``valid``, ``token`` and
    ``refresh(request)``), ``treq`` (an object with treq's ``post``), ``clock`` (backoff timer),
    ``to_thread`` (runs google-auth's blocking calls), ``auth_request`` (google-auth transport).
    """

    log = Logger()

    def __init__(
        self,
        key_name: str,
        *,
        api_base: str = DEFAULT_API_BASE,
        credentials: Any = None,
        treq: Any = None,
        clock: IReactorTime | None = None,
        to_thread: ToThread = deferToThread,
        auth_request: Any = None,
        max_attempts: int = 5,
        initial_delay: float = 0.25,
        max_delay: float = 8.0,
        timeout: float = 30.0,
    ) -> None:
        if treq is None:
            import treq as treq_module

            treq = treq_module
        if clock is None:
            from twisted.internet import reactor

            clock = reactor
        self.key_name = key_name
        self._api_base = api_base.rstrip("/")
        self._credentials = credentials
        self._treq = treq
        self._clock = clock
        self._to_thread = to_thread
        self._auth_request = auth_request
        self._max_attempts = max_attempts
        self._initial_delay = initial_delay
        self._max_delay = max_delay
        self._timeout = timeout

    async def encrypt(self, plaintext: bytes) -> bytes:
        body = await self._call("encrypt", {"plaintext": base64.b64encode(plaintext).decode()})
        return _decode_field(body, "ciphertext")

    async def decrypt(self, ciphertext: bytes) -> bytes:
        body = await self._call("decrypt", {"ciphertext": base64.b64encode(ciphertext).decode()})
        return _decode_field(body, "plaintext")

    def backoff_delays(self) -> list[float]:
        """Waits between attempts: exponential from initial_delay, capped at max_delay."""
        return [
            min(self._initial_delay * 2**attempt, self._max_delay)
            for attempt in range(self._max_attempts - 1)
        ]

    async def _call(self, operation: str, payload: Mapping[str, str]) -> Mapping[str, Any]:
        url = f"{self._api_base}/v1/{self.key_name}:{operation}"
        delays = self.backoff_delays()
        refreshed = False
        attempt = 0
        while True:
            token = await self._token(force=False)
            problem: str
            try:
                response = await self._treq.post(
                    url,
                    data=orjson.dumps(payload),
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json",
                    },
                    timeout=self._timeout,
                )
                raw = await response.content()
            except Exception as error:
                problem = f"{type(error).__name__}"
            else:
                if response.code == 200:
                    return _parse_body(raw, operation)
                if response.code == 401 and not refreshed:
                    refreshed = True
                    await self._token(force=True)
                    continue
                if response.code not in _RETRY_STATUSES:
                    raise KmsError(_describe_failure(operation, self.key_name, response.code, raw))
                problem = f"HTTP {response.code}"
            if attempt >= len(delays):
                raise KmsError(
                    f"Cloud KMS {operation} with {self.key_name} failed after "
                    f"{attempt + 1} attempts: {problem}"
                )
            delay = delays[attempt]
            attempt += 1
            self.log.warn(
                "Cloud KMS {operation} failed ({problem}); retry {attempt} in {delay:.2f} s",
                operation=operation,
                problem=problem,
                attempt=attempt,
                delay=delay,
            )
            await deferLater(self._clock, delay, lambda: None)

    async def _token(self, *, force: bool) -> str:
        if self._credentials is None:
            self._credentials = await self._to_thread(_default_credentials)
        credentials = self._credentials
        if force or not credentials.valid:
            request = self._auth_request or UrllibAuthRequest()
            try:
                await self._to_thread(credentials.refresh, request)
            except Exception as error:
                raise KmsError(
                    f"cannot get a Google access token for Cloud KMS: {type(error).__name__}"
                ) from None
        return str(credentials.token)


def _default_credentials() -> Any:
    """Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, metadata server...)."""
    import google.auth
    import google.auth.exceptions

    try:
        credentials, _project = google.auth.default(scopes=[KMS_SCOPE])
    except google.auth.exceptions.DefaultCredentialsError as error:
        raise KmsError(f"no Google credentials for Cloud KMS: {error}") from None
    return credentials


def _parse_body(raw: bytes, operation: str) -> Mapping[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        body = None
    if not isinstance(body, dict):
        raise KmsError(f"Cloud KMS {operation} returned a body that is not a JSON object")
    return body


def _decode_field(body: Mapping[str, Any], name: str) -> bytes:
    value = body.get(name)
    if not isinstance(value, str):
        raise KmsError(f"Cloud KMS response has no {name}")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise KmsError(f"Cloud KMS response {name} is not base64") from None


def _describe_failure(operation: str, key_name: str, code: int, raw: bytes) -> str:
    detail = ""
    try:
        error = orjson.loads(raw).get("error", {})
        detail = str(error.get("message", ""))[:200]
    except (orjson.JSONDecodeError, AttributeError):
        pass
    if code == 404:
        return f"Cloud KMS key {key_name} not found (HTTP 404)"
    if code == 403:
        return (
            f"Cloud KMS denied {operation} on {key_name} (HTTP 403); grant "
            "roles/cloudkms.cryptoKeyEncrypterDecrypter to this service account"
        )
    suffix = f": {detail}" if detail else ""
    return f"Cloud KMS {operation} with {key_name} failed (HTTP {code}){suffix}"


class UrllibAuthRequest:
    """google-auth's transport interface over urllib, so token refresh needs no `requests`.

    Called only from a thread (see ``GcpKms._token``): it blocks.
    """

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = None,
        **kwargs: Any,
    ) -> _UrllibResponse:
        import google.auth.exceptions

        request = urllib.request.Request(  # noqa: S310 - google-auth passes https/metadata URLs
            url, data=body, headers=dict(headers or {}), method=method
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or 120) as response:  # noqa: S310
                return _UrllibResponse(response.status, dict(response.headers), response.read())
        except urllib.error.HTTPError as error:
            return _UrllibResponse(error.code, dict(error.headers), error.read())
        except (urllib.error.URLError, OSError) as error:
            transport_error: Callable[[str], Exception] = google.auth.exceptions.TransportError
            raise transport_error(str(error)) from None


class _UrllibResponse:
    def __init__(self, status: int, headers: Mapping[str, str], data: bytes) -> None:
        self.status = status
        self.headers = headers
        self.data = data
