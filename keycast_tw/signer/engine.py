"""The NIP-46 engine: one incoming kind-24133 event in, the response event to publish out.

Transport-free: the relay layer hands every event here and publishes ``Outcome.response``. The
pipeline runs the cheapest filters first, so traffic for bunkers we do not manage (most of what a
public relay sends) costs a few dictionary lookups and no crypto:

1. kind 24133, a ``p`` tag naming a bunker we manage, an author that is not one of our bunkers
   (a reply loop between two of our own bunkers is impossible), content within the size limit,
   created_at within the window;
2. crypto call 1 (pure): verify id and signature, derive or reuse the conversation key, decrypt
   (NIP-04 when the content has ``?iv=``, else NIP-44) and parse the request;
3. claim the event id in the store: each request is executed at most once, across relays and
   restarts (a bad signature is never claimed, so a forged copy cannot block the real one).
   An event with nothing to reply to (undecryptable, not a request) first takes a token from
   its author's rate limit and is dropped without a claim when there is none: the limiter
   comes after the signature check, so forged copies cannot drain a real client's bucket;
4. on the reactor thread: rate limit, liveness (revoked, expired), session, method dispatch;
   sessions, caches and rate limits are only ever touched here;
5. crypto call 2 (pure): execute the method with the user key, encrypt the reply in the request's
   scheme, sign it with the bunker key.

Every request that decrypts and carries a readable id gets a reply, success or error; only events
that are not ours, forged, stale, duplicated or undecryptable are dropped without one.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from secrets import token_hex
from typing import Any, Final, cast

import orjson
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from keycast_tw.nostr import nip04, nip44, nip46
from keycast_tw.nostr.errors import (
    DecryptionError,
    EncryptionError,
    InvalidEvent,
    MalformedRequest,
)
from keycast_tw.nostr.event import check_event, sign_validated
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.signer import methods
from keycast_tw.signer.crypto import CryptoRunner, KeyCache, run_inline
from keycast_tw.signer.interfaces import SignerStore
from keycast_tw.signer.methods import MethodResult, Refused
from keycast_tw.signer.model import ActivityRecord, Authorization, KeySource, KeyUnavailable
from keycast_tw.signer.ratelimit import RateLimiter
from keycast_tw.signer.registry import Registry
from keycast_tw.signer.secrets import connect_secret_matches

KIND: Final = nip46.KIND

OK: Final = "ok"
ERROR: Final = "error"
IGNORED: Final = "ignored"
UNDECRYPTABLE: Final = "undecryptable"

NOT_CONNECTED: Final = "not connected: send connect with the bunker secret first"
RATE_LIMITED: Final = "rate-limited: slow down"
INVALID_SECRET: Final = "invalid secret"  # noqa: S105 (an error text)
SECRET_USED: Final = "secret already used by another client"  # noqa: S105
NO_NEW_CLIENTS: Final = "this authorization accepts no new connections"
REVOKED: Final = "authorization revoked"
EXPIRED: Final = "authorization expired"
USER_KEY_UNAVAILABLE: Final = "signing key unavailable"
INTERNAL_ERROR: Final = "internal error"
RESPONSE_TOO_LARGE: Final = "response too large for the transport encryption"
TRANSPORT_KEY_DECRYPT: Final = "decrypt refused: this key also serves as a bunker transport key"

KNOWN_METHODS: Final = frozenset(
    {"connect", "ping", "get_public_key", "sign_event", "switch_relays", "logout", "get_relays"}
    | methods.THIRD_PARTY_METHODS
)


@dataclass(frozen=True, slots=True)
class EngineConfig:
    """Tunables of the engine; the defaults suit a public-relay deployment."""

    #: requests whose created_at is further than this from now (seconds) are dropped as stale.
    created_at_window: int = 600
    #: longest request content (characters) that is decrypted at all; longer ones are dropped.
    max_content_length: int = 512 * 1024
    #: token bucket per client pubkey: sustained requests per second (0 disables) and burst.
    rate_per_second: float = 20.0
    rate_burst: float = 40.0
    #: how many clients the rate limiter tracks (least recently seen evicted first).
    rate_limit_clients: int = 100_000
    #: entries of each derived-key cache (NIP-44 conversation keys, NIP-04 shared secrets).
    key_cache_size: int = 10_000
    #: how far ahead of now (seconds) the created_at of an event to sign may be.
    max_sign_future: int = 900


@dataclass(frozen=True, slots=True)
class Outcome:
    """What happened to one event: the response to publish (or None) and what to count.

    ``outcome`` is "ok", "error" (an error reply, or no reply when even that was impossible),
    "ignored" (not ours, malformed, stale, forged, duplicate) or "undecryptable". ``reason`` is a
    short text for logs and metrics; it never contains secrets or request content.
    """

    response: dict[str, Any] | None
    bunker: str | None
    client: str | None
    method: str | None
    outcome: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class _Opened:
    """The result of crypto call 1. Holds the decrypted request: never log or repr it."""

    verified: bool
    reason: str
    secret: SecretKey | None = None
    transport_key: bytes | None = None
    derived: bool = False
    request: nip46.Request | None = None
    malformed_id: str | None = None

    @property
    def unanswerable(self) -> bool:
        """Verified and read with our key, but without an id to reply to: undecryptable or not
        a request at all. (A bunker key we cannot use is our fault, not the client's.)"""
        return self.transport_key is not None and self.request is None and self.malformed_id is None

    def __repr__(self) -> str:
        return f"_Opened(verified={self.verified}, reason={self.reason!r})"


@dataclass(frozen=True, slots=True)
class _Replied:
    """The result of crypto call 2: the signed response (None when not even an error reply
    could be encrypted) and what to record (MethodResult's repr hides its value, so this repr
    is safe)."""

    response: dict[str, Any] | None
    result: MethodResult | None
    error: str | None
    failure: Failure | None = None


class Engine:
    """Handles NIP-46 requests for the bunkers in ``registry``; see the module docstring."""

    log = Logger()

    def __init__(
        self,
        registry: Registry,
        store: SignerStore,
        *,
        clock: IReactorTime | Callable[[], float],
        run_crypto: CryptoRunner = run_inline,
        config: EngineConfig | None = None,
        log: Logger | None = None,
    ) -> None:
        self._registry = registry
        self._store = store
        self._now = _time_source(clock)
        self._run = run_crypto
        self._config = config = config or EngineConfig()
        if log is not None:
            self.log = log
        self._limiter = RateLimiter(
            config.rate_per_second, config.rate_burst, max_keys=config.rate_limit_clients
        )
        self._nip44_keys: KeyCache[tuple[str, str], bytes] = KeyCache(config.key_cache_size)
        self._nip04_keys: KeyCache[tuple[str, str], bytes] = KeyCache(config.key_cache_size)

    def cache_stats(self) -> dict[str, int]:
        """Sizes and hit counts of the derived-key caches, for /status and metrics."""
        return {
            "nip44_keys": len(self._nip44_keys),
            "nip44_hits": self._nip44_keys.hits,
            "nip44_misses": self._nip44_keys.misses,
            "nip04_keys": len(self._nip04_keys),
            "nip04_hits": self._nip04_keys.hits,
            "nip04_misses": self._nip04_keys.misses,
        }

    def connect_response(
        self, auth: Authorization, client: str, secret: str
    ) -> Deferred[dict[str, Any]]:
        """The unsolicited connect response of the nostrconnect:// flow, signed, to publish.

        The client made a URI with its pubkey and ``secret``; it waits for a kind-24133 event
        p-tagging it whose NIP-44 content, from the bunker key, has ``result == secret``, and
        learns the bunker pubkey from the author. The id is random: clients match only the
        result. The conversation key goes into the cache, so the client's first request costs
        no ECDH. Fails with KeyUnavailable when the bunker key does not decrypt.
        """
        cache_key = (auth.bunker_pubkey, client)
        cached = self._nip44_keys.get(cache_key)
        response_id = token_hex(8)
        built = self._run(
            _connect_response, auth.bunker_key, client, cached, secret, response_id,
            int(self._now()),
        )

        def cache_key_then_event(result: tuple[dict[str, Any], bytes]) -> dict[str, Any]:
            event, key = result
            if cached is None:
                self._nip44_keys.put(cache_key, key)
            return event

        return built.addCallback(cache_key_then_event)

    def handle_event(self, event: Mapping[str, Any]) -> Deferred[Outcome]:
        """Handle one relay event; fires with its Outcome and never fails.

        The relay layer calls this for every event it receives and does not guard it, so even a
        bug here (or a store that raises where it must not) ends as an "error" Outcome with the
        failure logged, never as an exception or a failed Deferred.
        """
        try:
            routed = self._route(event)
        except Exception:
            self.log.failure("NIP-46 event could not be routed")
            return succeed(Outcome(None, None, None, None, ERROR, INTERNAL_ERROR))
        if isinstance(routed, Outcome):
            return succeed(routed)
        auth, client, event_id, created_at = routed
        bunker = auth.bunker_pubkey
        handling = Deferred.fromCoroutine(self._handle(event, auth, client, event_id, created_at))
        return handling.addErrback(self._unexpected, bunker, client)

    def _route(self, event: Mapping[str, Any]) -> Outcome | tuple[Authorization, str, str, int]:
        """The cheap filters (step 1): the authorization, client, id and created_at to handle,
        or the Outcome of an event that is not ours or cannot be a valid request."""
        if not isinstance(event, Mapping) or event.get("kind") != KIND:
            return Outcome(None, None, None, None, IGNORED, "not kind 24133")
        registry = self._registry
        auth = None
        tags = event.get("tags")
        if type(tags) is list:
            for tag in tags:
                if type(tag) is list and len(tag) >= 2 and tag[0] == "p":
                    target = tag[1]
                    if type(target) is str:
                        auth = registry.get(target)
                        if auth is not None:
                            break
        if auth is None:
            return Outcome(None, None, None, None, IGNORED, "not ours")
        client = event.get("pubkey")
        content = event.get("content")
        created_at = event.get("created_at")
        event_id = event.get("id")
        now = self._now()
        window = self._config.created_at_window
        if type(client) is not str or type(content) is not str or type(event_id) is not str:
            return self._ignored(auth.bunker_pubkey, None, "invalid event")
        if type(created_at) is not int:
            return self._ignored(auth.bunker_pubkey, None, "invalid created_at")
        if registry.get(client) is not None:
            return self._ignored(auth.bunker_pubkey, None, "from one of our own bunkers")
        if len(content) > self._config.max_content_length:
            return self._ignored(auth.bunker_pubkey, None, "content too large")
        # Compared, not subtracted: a float minus a huge int would raise OverflowError.
        if not now - window <= created_at <= now + window:
            return self._ignored(auth.bunker_pubkey, None, "stale created_at")
        return auth, client, event_id, created_at

    def _ignored(self, bunker: str, client: str | None, reason: str) -> Outcome:
        """Drop an event without a reply, at debug level: junk traffic must not flood the log."""
        self.log.debug(
            "Ignoring NIP-46 event for bunker {bunker}: {reason}",
            bunker=_short(bunker),
            reason=reason,
        )
        return Outcome(None, bunker, client, None, IGNORED, reason)

    def _unexpected(self, failure: Failure, bunker: str, client: str) -> Outcome:
        """Last resort for a bug in the pipeline: log it, answer nothing, count an error."""
        self.log.failure(
            "NIP-46 request for bunker {bunker} failed", failure, bunker=_short(bunker)
        )
        return Outcome(None, bunker, client, None, ERROR, INTERNAL_ERROR)

    async def _handle(
        self,
        event: Mapping[str, Any],
        auth: Authorization,
        client: str,
        event_id: str,
        created_at: int,
    ) -> Outcome:
        """Steps 2 to 5 of the module docstring for an event that passed the cheap filters."""
        bunker = auth.bunker_pubkey
        legacy = nip04.is_nip04(event["content"])
        cache = self._nip04_keys if legacy else self._nip44_keys
        cache_key = (bunker, client)
        cached = cache.get(cache_key)
        # A failure here (a bug: _open catches what bad input can raise) goes to _unexpected.
        opened = await self._run(_open, event, auth.bunker_key, client, cached, legacy)
        if not opened.verified:
            return self._ignored(bunker, client, opened.reason)
        if opened.derived and opened.transport_key is not None:
            # Cached whatever happens next (duplicate, undecryptable): the key depends only on
            # the two pubkeys, and a client that repeats itself must not cost an ECDH each time.
            cache.put(cache_key, opened.transport_key)
        if opened.unanswerable and not self._limiter.allow(client, self._now()):
            # Junk gets no reply anyway; past the client's burst it costs no claim and no WARN.
            return self._ignored(bunker, client, "rate-limited")
        try:
            claimed = await self._store.claim_request(event_id, created_at)
        except Exception:
            # Without the claim, at-most-once cannot be guaranteed: do not execute.
            self.log.failure(
                "Could not claim NIP-46 event for bunker {bunker}", bunker=_short(bunker)
            )
            return Outcome(None, bunker, client, None, ERROR, "store unavailable")
        if not claimed:
            self.log.debug(
                "Ignoring duplicate NIP-46 event for bunker {bunker}", bunker=_short(bunker)
            )
            return Outcome(None, bunker, client, None, IGNORED, "duplicate")
        self.log.info("Received NIP-46 request for bunker: {bunker}", bunker=_short(bunker))
        if opened.reason == UNDECRYPTABLE:
            self.log.warn(
                "Cannot decrypt NIP-46 request from {client} for bunker {bunker}",
                client=_short(client),
                bunker=_short(bunker),
            )
            return Outcome(None, bunker, client, None, UNDECRYPTABLE, "decryption failed")
        secret = opened.secret
        transport_key = opened.transport_key
        if secret is None or transport_key is None:
            self.log.error(
                "Bunker key of authorization {authorization} is unavailable: {reason}",
                authorization=auth.id,
                reason=opened.reason,
            )
            return Outcome(None, bunker, client, None, ERROR, opened.reason)
        request = opened.request
        if request is None:
            if opened.malformed_id is None:
                self.log.warn(
                    "Unreadable NIP-46 request from {client}: {reason}",
                    client=_short(client),
                    reason=opened.reason,
                )
                return Outcome(None, bunker, client, None, ERROR, opened.reason)
            request_id = opened.malformed_id
            method = None
        else:
            request_id = request.id
            method = request.method if request.method in KNOWN_METHODS else "unsupported"
            self.log.info("Processing NIP-46 method: {method}", method=method)
        # The registry may have changed while the claim or the crypto was in flight.
        current = self._registry.get(bunker)
        if not self._limiter.allow(client, self._now()):
            work = _refusal(RATE_LIMITED)
        elif current is None:
            work = _refusal(REVOKED)
        elif request is None:
            work = _refusal(opened.reason)
        else:
            auth = current
            work = await self._dispatch(auth, client, request)
        now = int(self._now())
        try:
            replied = await self._run(
                _reply, work.run, secret, transport_key, legacy, request_id, client, event_id, now
            )
        except Exception:
            self.log.failure("NIP-46 reply for bunker {bunker} failed", bunker=_short(bunker))
            return Outcome(None, bunker, client, method, ERROR, INTERNAL_ERROR)
        return self._finish(auth, client, method, work, replied, now)

    def _finish(
        self,
        auth: Authorization,
        client: str,
        method: str | None,
        work: _Work,
        replied: _Replied,
        now: int,
    ) -> Outcome:
        """Book-keeping once the reply is built: key cache, error logs, activity log."""
        bunker = auth.bunker_pubkey
        if replied.failure is not None:
            self.log.failure(
                "NIP-46 method {method} failed for bunker {bunker}",
                replied.failure,
                method=method,
                bunker=_short(bunker),
            )
        if replied.response is None:
            self.log.warn(
                "No reply to NIP-46 request from {client} for bunker {bunker}: even the error"
                " reply is too large to encrypt",
                client=_short(client),
                bunker=_short(bunker),
            )
        result = replied.result
        derived = result.derived_key if result is not None else None
        if derived is not None and work.cache is not None and work.cache_key is not None:
            work.cache.put(work.cache_key, derived)
        error = replied.error
        if error == USER_KEY_UNAVAILABLE:
            self.log.error(
                "User key of authorization {authorization} is unavailable",
                authorization=auth.id,
            )
        if error != RATE_LIMITED:
            # A client over its rate limit would otherwise flood the activity log too.
            record = ActivityRecord(
                authorization_id=auth.id,
                client_pubkey=client,
                method=method or "malformed",
                outcome=OK if error is None else ERROR,
                created_at=now,
                event_kind=result.event_kind if result is not None else None,
                event_id=result.event_id if result is not None else None,
                error=error,
            )
            try:
                self._store.record_activity(record)
            except Exception:
                # The reply is signed already: a broken activity log must not swallow it.
                self.log.failure(
                    "Could not record NIP-46 activity for bunker {bunker}", bunker=_short(bunker)
                )
        if error is None:
            return Outcome(replied.response, bunker, client, method, OK)
        return Outcome(replied.response, bunker, client, method, ERROR, error)

    async def _dispatch(self, auth: Authorization, client: str, request: nip46.Request) -> _Work:
        """Decide on a request (reactor thread): refuse it, answer it, or plan its crypto.

        Expired and revoked authorizations refuse every method, ping included: a client that
        pings to check its connection should learn that it is gone, not get a cheerful pong.
        """
        now = self._now()
        if not auth.is_live(now):
            return _refusal(REVOKED if auth.revoked_at is not None else EXPIRED)
        method = request.method
        params = request.params
        if method == "ping":
            return _answer("pong")
        if method == "connect":
            return await self._connect(auth, client, params, int(now))
        sessions = auth.sessions
        if sessions is None or sessions.get(client) is not True:
            return _refusal(NOT_CONNECTED)
        if method == "sign_event":
            return _Work(
                partial(
                    methods.sign_event,
                    params,
                    auth.user_key,
                    auth.policy,
                    int(now),
                    self._config.max_sign_future,
                    user_is_transport=self._registry.bunker_key_owner(auth.user_pubkey) is not None,
                )
            )
        if method in methods.THIRD_PARTY_METHODS:
            if method.endswith("_decrypt") and self._opens_other_transport(auth):
                return _refusal(TRANSPORT_KEY_DECRYPT)
            cache = self._nip04_keys if method.startswith("nip04") else self._nip44_keys
            cache_key = (auth.user_pubkey, params[0].lower()) if params else None
            cached = cache.get(cache_key) if cache_key is not None else None
            run = partial(
                methods.third_party_crypto, method, params, auth.user_key, auth.policy, cached
            )
            return _Work(run, cache if cached is None else None, cache_key)
        if method == "get_public_key":
            return _answer(auth.user_pubkey)
        if method == "switch_relays":
            return _answer(orjson.dumps(list(auth.relays)).decode() if auth.relays else "null")
        if method == "get_relays":
            relays = {url: {"read": True, "write": True} for url in auth.relays}
            return _answer(orjson.dumps(relays).decode())
        if method == "logout":
            return await self._logout(auth, client, int(now))
        return _refusal(f"unsupported method: {method[:64]}")

    def _opens_other_transport(self, auth: Authorization) -> bool:
        """Whether ``auth``'s user key is the transport key of another authorization.

        With a same-key authorization B (bunker key == user key U), the key U shares with any
        client Y is also B's transport key with Y. A client of another authorization of U could
        then decrypt, with third party Y, Y's requests to B and B's replies (connect secret
        included) and escape its own policy. Inside B itself this is allowed: its clients share
        one bunker and one policy. Encrypting is harmless: a request also needs Y's signature.
        """
        owner = self._registry.bunker_key_owner(auth.user_pubkey)
        return owner is not None and owner != auth.id

    async def _connect(
        self, auth: Authorization, client: str, params: tuple[str, ...], now: int
    ) -> _Work:
        """Bind ``client`` to the authorization if it presents the connect secret.

        params[0] is not checked: clients send the bunker pubkey, the user pubkey or "" there.
        The secret is single-use across clients: the first ``max_uses`` distinct clients that
        present it are bound, and only they may reconnect (with the same secret, also after a
        logout). A client whose session is live may also connect without a secret (clients
        that restored a session re-send connect with an empty one); a wrong secret is refused.
        An authorization without a secret accepts no new clients at all. The session is
        recorded before the store is awaited, so two racing connects cannot both take the last
        free use; a failed save is rolled back and refused.
        """
        sessions = auth.sessions
        previous = sessions.get(client) if sessions is not None else None
        secret_hash = auth.secret_hash
        if secret_hash is None:
            return _answer("ack") if previous is True else _refusal(NO_NEW_CLIENTS)
        presented = params[1] if len(params) > 1 else ""
        if not presented and previous is True:
            return _answer("ack")  # a live session re-announcing itself gains nothing new
        if not presented or not connect_secret_matches(presented, secret_hash):
            return _refusal(INVALID_SECRET)
        if previous is None and auth.max_uses is not None and len(sessions or ()) >= auth.max_uses:
            return _refusal(SECRET_USED)
        if sessions is None:
            sessions = auth.sessions = {}
        sessions[client] = True
        try:
            await self._store.save_session(auth.id, client, now)
        except Exception:
            self.log.failure("Could not save the session of client {client}", client=_short(client))
            if previous is None:
                sessions.pop(client, None)
            else:
                sessions[client] = previous
            return _refusal("could not save the session, try again")
        if previous is not True:
            self.log.info(
                "Client {client} connected to bunker {bunker}",
                client=_short(client),
                bunker=_short(auth.bunker_pubkey),
            )
        return _answer("ack")

    async def _logout(self, auth: Authorization, client: str, now: int) -> _Work:
        """End the client's session; it must connect again (with the secret) to be served.

        The reply is "ack" even when persisting fails: the client drops its key either way, and
        the failure is logged for the operator.
        """
        if auth.sessions is not None:
            auth.sessions[client] = False
        try:
            await self._store.end_session(auth.id, client, now)
        except Exception:
            self.log.failure("Could not save the logout of client {client}", client=_short(client))
        self.log.info(
            "Client {client} logged out of bunker {bunker}",
            client=_short(client),
            bunker=_short(auth.bunker_pubkey),
        )
        return _answer("ack")


@dataclass(frozen=True, slots=True, repr=False)
class _Work:
    """What crypto call 2 runs to get the result, and where a derived third-party key goes."""

    run: Callable[[], MethodResult]
    cache: KeyCache[tuple[str, str], bytes] | None = None
    cache_key: tuple[str, str] | None = None

    def __repr__(self) -> str:
        # ``run`` closes over the request params (plaintexts, secrets).
        return "_Work(...)"


def _answer(value: str) -> _Work:
    result = MethodResult(value)
    return _Work(lambda: result)


def _refusal(reason: str) -> _Work:
    def refuse() -> MethodResult:
        raise Refused(reason)

    return _Work(refuse)


def _open(
    event: Mapping[str, Any],
    bunker_key: KeySource,
    client: str,
    cached: bytes | None,
    legacy: bool,
) -> _Opened:
    """Crypto call 1 (pure): verify, get the transport key, decrypt, parse."""
    try:
        check_event(event)
    except InvalidEvent as error:
        return _Opened(False, f"invalid event: {error}")
    try:
        secret = bunker_key.secret_key()
    except KeyUnavailable as error:
        return _Opened(True, str(error))
    key = cached
    if key is None:
        peer = bytes.fromhex(client)  # a verified event's pubkey is a valid x-only key
        key = secret.shared_x(peer) if legacy else nip44.conversation_key(secret, peer)
    derived = cached is None
    content = event["content"]
    try:
        plaintext = nip04.decrypt_with_key(content, key) if legacy else nip44.decrypt(content, key)
    except DecryptionError:
        return _Opened(True, UNDECRYPTABLE, secret, key, derived)
    try:
        request = nip46.parse_request(plaintext)
    except MalformedRequest as error:
        reason = f"malformed request: {error}"
        return _Opened(True, reason, secret, key, derived, malformed_id=error.request_id)
    return _Opened(True, "", secret, key, derived, request)


def _reply(
    run: Callable[[], MethodResult],
    secret: SecretKey,
    transport_key: bytes,
    legacy: bool,
    request_id: str,
    client: str,
    event_id: str,
    now: int,
) -> _Replied:
    """Crypto call 2 (pure): execute, encrypt the reply in the request's scheme, sign it."""
    result: MethodResult | None = None
    error: str | None = None
    failure: Failure | None = None
    body: str | None = None
    try:
        result = run()
        body = nip46.response_json(request_id, result.value)
    except Refused as refused:
        error = refused.reason
    except KeyUnavailable:
        error = USER_KEY_UNAVAILABLE
    except Exception:
        failure = Failure()  # type: ignore[no-untyped-call]
        error = INTERNAL_ERROR
    if body is None:
        result = None
        body = nip46.error_json(request_id, error or INTERNAL_ERROR)
    try:
        content = _encrypt(body, transport_key, legacy)
    except EncryptionError:
        # Too large for what every client can decrypt: say so rather than stay silent.
        result = None
        error = RESPONSE_TOO_LARGE
        try:
            content = _encrypt(nip46.error_json(request_id, error), transport_key, legacy)
        except EncryptionError:
            # Only an id near the transport limit makes even this too large (parse_request
            # bounds ids, so this is a safety net): no reply, rather than a failed request.
            return _Replied(None, None, error, failure)
    # Built here from checked values (client and event_id come from a verified event), so the
    # event module does not check the shape again.
    response = sign_validated(
        secret, kind=KIND, content=content, tags=[["p", client], ["e", event_id]], created_at=now
    )
    return _Replied(response, result, error, failure)


def _connect_response(
    bunker_key: KeySource,
    client: str,
    cached: bytes | None,
    secret: str,
    response_id: str,
    now: int,
) -> tuple[dict[str, Any], bytes]:
    """Crypto call (pure): the signed nostrconnect response and the conversation key used."""
    bunker = bunker_key.secret_key()
    key = cached if cached is not None else nip44.conversation_key(bunker, bytes.fromhex(client))
    content = _encrypt(nip46.response_json(response_id, secret), key, False)
    # The client pubkey was checked when the URI was parsed: no shape check needed again.
    event = sign_validated(bunker, kind=KIND, content=content, tags=[["p", client]], created_at=now)
    return event, key


def _encrypt(body: str, key: bytes, legacy: bool) -> str:
    return nip04.encrypt_with_key(body, key) if legacy else nip44.encrypt(body, key)


def _time_source(clock: IReactorTime | Callable[[], float]) -> Callable[[], float]:
    seconds = getattr(clock, "seconds", None)
    if callable(seconds):
        return cast(Callable[[], float], seconds)
    return cast(Callable[[], float], clock)


def _short(pubkey: str) -> str:
    """The first 8 hex characters, enough to grep logs without printing whole keys."""
    return pubkey[:8] + "…"
