"""What the ``keycast`` admin command does to the database: keys, policies, authorizations.

Synchronous functions over an open sqlite3 connection (keycast_tw.store.db.open_database) and the
SecretCipher of the master key. Each function is one transaction, so a command either happens
completely or not at all, and a running daemon picks the change up on its next reload through
the change_seq triggers. Nothing returned or raised here carries a secret key or a connect
secret, except the BunkerURI that ``authorize`` returns to be shown once (``connect`` takes a
client's secret and stores it only encrypted, for the daemon to send back).

Mistakes the operator can fix (unknown key, duplicate name, bad policy) raise AdminError with a
message fit for the terminal; database failures leave as keycast_tw.store.errors.StoreError.
"""

from __future__ import annotations

import json
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol
from urllib.parse import urlsplit

from keycast_tw.config import check_relay_url
from keycast_tw.nostr.errors import NostrError
from keycast_tw.nostr.keys import SecretKey
from keycast_tw.nostr.nip19 import decode_npub, encode_npub
from keycast_tw.nostr.nip46 import BunkerURI, parse_nostrconnect_uri
from keycast_tw.signer import policy as policies
from keycast_tw.signer.model import REGULAR, Permission
from keycast_tw.signer.secrets import generate_connect_secret, hash_connect_secret
from keycast_tw.store.connects import queue_connect_response
from keycast_tw.store.crypto import bunker_key_aad, user_key_aad
from keycast_tw.store.db import mapped_errors, transaction

Clock = Callable[[], float]

LIVE = "live"
REVOKED = "revoked"
EXPIRED = "expired"

MAX_NAME_LENGTH = 64
MAX_LABEL_LENGTH = 200
MAX_CONNECT_SECRET_LENGTH = 512


class Cipher(Protocol):
    """The part of keycast_tw.store.crypto.SecretCipher this module uses."""

    def encrypt(self, plaintext: bytes, aad: bytes) -> bytes: ...


class AdminError(Exception):
    """An operator mistake: the message says what is wrong and never holds a secret."""


class NotFound(AdminError):
    """The named key, policy or authorization does not exist."""


class AlreadyExists(AdminError):
    """A key or policy with that name (or that key) is already stored."""


class InvalidInput(AdminError):
    """A name, key, relay, policy or limit is not acceptable."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A stored user key, without its secret."""

    id: int
    name: str
    pubkey: str
    created_at: int

    @property
    def npub(self) -> str:
        return encode_npub(self.pubkey)


@dataclass(frozen=True, slots=True)
class PolicyInfo:
    id: int
    name: str
    permissions: tuple[Permission, ...]
    created_at: int


@dataclass(frozen=True, slots=True)
class AuthorizationInfo:
    """One authorization as the operator sees it; ``uses`` counts the clients that connected.

    ``status`` is "live", "revoked" or "expired" at the time of the query. ``same_key`` is True
    when the bunker key is the user key (for old clients).
    """

    id: int
    kind: str
    key_name: str
    user_pubkey: str
    bunker_pubkey: str
    same_key: bool
    relays: tuple[str, ...]
    policy: str | None
    max_uses: int | None
    uses: int
    expires_at: int | None
    revoked_at: int | None
    label: str | None
    created_at: int
    status: str


@dataclass(frozen=True, slots=True)
class ConnectResult:
    """What ``connect`` created: the authorization, its one client, the URI's relays left out
    (the daemon does not listen there) and the permissions the client asked for (not granted)."""

    authorization: AuthorizationInfo
    client_pubkey: str
    ignored_relays: tuple[str, ...]
    requested_perms: tuple[str, ...]


# -- keys ---------------------------------------------------------------------------------------


def add_key(
    conn: sqlite3.Connection,
    cipher: Cipher,
    name: str,
    secret: bytes | None = None,
    *,
    clock: Clock = time.time,
) -> KeyInfo:
    """Store a user key under ``name``: ``secret`` (32 raw bytes) or a freshly generated one."""
    _check_name(name, "key")
    try:
        key = SecretKey(secret) if secret is not None else SecretKey.generate()
    except NostrError:
        raise InvalidInput("that is not a valid secp256k1 secret key") from None
    pubkey = key.pubkey_hex
    now = int(clock())
    with mapped_errors(_path(conn)), transaction(conn):
        if _one(conn, "SELECT id FROM user_keys WHERE name = ?", (name,)) is not None:
            raise AlreadyExists(f"a key named {name!r} already exists")
        other = _one(conn, "SELECT name FROM user_keys WHERE pubkey = ?", (pubkey,))
        if other is not None:
            raise AlreadyExists(f"this key is already stored as {other[0]!r}")
        ciphertext = cipher.encrypt(key.to_bytes(), user_key_aad(pubkey))
        cursor = conn.execute(
            "INSERT INTO user_keys (name, pubkey, secret_ciphertext, created_at)"
            " VALUES (?, ?, ?, ?)",
            (name, pubkey, ciphertext, now),
        )
        assert cursor.lastrowid is not None
        return KeyInfo(cursor.lastrowid, name, pubkey, now)


def list_keys(conn: sqlite3.Connection) -> list[KeyInfo]:
    with mapped_errors(_path(conn)):
        rows = conn.execute(
            "SELECT id, name, pubkey, created_at FROM user_keys ORDER BY id"
        ).fetchall()
    return [KeyInfo(*row) for row in rows]


def find_key(conn: sqlite3.Connection, key: str) -> KeyInfo:
    """The key called ``key``: a name, an id, an npub or a hex pubkey (NotFound otherwise).

    Names can never look like the other three forms (see _check_name), so this is unambiguous.
    Errors never repeat a pasted secret: an nsec is refused unseen, and 64 hex digits (a
    pubkey, or a secret key pasted by mistake) are shown shortened.
    """
    key = key.strip()
    if key.startswith("nsec1"):
        raise InvalidInput(_NSEC_GIVEN)
    shown = f"{key[:12]}…" if _HEX64.fullmatch(key) else key[:70]
    if key.isdigit():
        where, value = "id = ?", key
    elif key.startswith("npub1"):
        try:
            value = decode_npub(key)
        except NostrError:
            raise InvalidInput(f"{key[:70]!r} is not a valid npub") from None
        where = "pubkey = ?"
    elif _HEX64.fullmatch(key):
        where, value = "pubkey = ?", key.lower()
    else:
        where, value = "name = ?", key
    with mapped_errors(_path(conn)):
        sql = f"SELECT id, name, pubkey, created_at FROM user_keys WHERE {where}"  # noqa: S608
        row = _one(conn, sql, (value,))
    if row is None:
        raise NotFound(f"no key {shown!r}; see `keycast key list`")
    return KeyInfo(*row)


# -- policies -----------------------------------------------------------------------------------


def add_policy(
    conn: sqlite3.Connection,
    name: str,
    permissions: Sequence[Permission],
    *,
    clock: Clock = time.time,
) -> PolicyInfo:
    """Store a policy; its permissions are checked here so the daemon never meets a bad one."""
    _check_name(name, "policy")
    checked = check_permissions(permissions)
    now = int(clock())
    with mapped_errors(_path(conn)), transaction(conn):
        if _one(conn, "SELECT id FROM policies WHERE name = ?", (name,)) is not None:
            raise AlreadyExists(f"a policy named {name!r} already exists")
        cursor = conn.execute(
            "INSERT INTO policies (name, created_at) VALUES (?, ?)", (name, now)
        )
        policy_id = cursor.lastrowid
        assert policy_id is not None
        conn.executemany(
            "INSERT INTO policy_permissions (policy_id, identifier, config) VALUES (?, ?, ?)",
            [
                (policy_id, p.identifier, json.dumps(dict(p.config), sort_keys=True))
                for p in checked
            ],
        )
    return PolicyInfo(policy_id, name, checked, now)


def list_policies(conn: sqlite3.Connection) -> list[PolicyInfo]:
    with mapped_errors(_path(conn)):
        rows = conn.execute("SELECT id, name, created_at FROM policies ORDER BY id").fetchall()
        grants = conn.execute(
            "SELECT policy_id, identifier, config FROM policy_permissions ORDER BY id"
        ).fetchall()
    by_policy: dict[int, list[Permission]] = {}
    for policy_id, identifier, config in grants:
        by_policy.setdefault(policy_id, []).append(Permission(identifier, _json_object(config)))
    return [
        PolicyInfo(policy_id, name, tuple(by_policy.get(policy_id, ())), created_at)
        for policy_id, name, created_at in rows
    ]


def check_permissions(permissions: Iterable[Permission]) -> tuple[Permission, ...]:
    """Validate and normalise permissions (sorted unique kinds, non-empty word lists).

    Stricter than the engine, which fails closed on anything it cannot read: here the operator
    learns at once that a policy would deny everything.
    """
    checked: list[Permission] = []
    seen: set[str] = set()
    for permission in permissions:
        identifier = permission.identifier
        if identifier not in policies.KNOWN_PERMISSIONS:
            known = ", ".join(sorted(policies.KNOWN_PERMISSIONS))
            raise InvalidInput(f"unknown permission {identifier[:40]!r}; known: {known}")
        if identifier in seen:
            raise InvalidInput(f"permission {identifier} is given twice")
        seen.add(identifier)
        checked.append(Permission(identifier, _check_config(identifier, permission.config)))
    if not checked:
        raise InvalidInput(
            "a policy needs at least one permission (use full_access to allow everything)"
        )
    if policies.FULL_ACCESS in seen and len(seen) > 1:
        raise InvalidInput("full_access cannot be combined with other permissions")
    return tuple(checked)


def _check_config(identifier: str, config: Mapping[str, Any]) -> dict[str, Any]:
    expected = {
        policies.ALLOWED_KINDS: {"allowed_kinds"},
        policies.CONTENT_FILTER: {"blocked_words"},
    }.get(identifier, set())
    extra = set(config) - expected
    if extra:
        raise InvalidInput(f"{identifier} takes no setting {sorted(extra)[0][:40]!r}")
    if identifier == policies.ALLOWED_KINDS:
        kinds = config.get("allowed_kinds")
        if not isinstance(kinds, list | tuple) or not kinds:
            raise InvalidInput("allowed_kinds needs a non-empty list of event kinds")
        for kind in kinds:
            if not isinstance(kind, int) or isinstance(kind, bool) or not 0 <= kind <= 65535:
                raise InvalidInput(f"event kind {kind!r} is not an integer 0..65535")
        return {"allowed_kinds": sorted(set(kinds))}
    if identifier == policies.CONTENT_FILTER:
        words = config.get("blocked_words")
        if not isinstance(words, list | tuple) or not words:
            raise InvalidInput("content_filter needs a non-empty list of blocked words")
        for word in words:
            if not isinstance(word, str) or not word.strip():
                raise InvalidInput("blocked words must be non-empty text")
        return {"blocked_words": list(dict.fromkeys(word.strip() for word in words))}
    return {}


def _find_policy(conn: sqlite3.Connection, policy: str) -> tuple[int, str]:
    policy = policy.strip()
    column = "id" if policy.isdigit() else "name"
    sql = f"SELECT id, name FROM policies WHERE {column} = ?"  # noqa: S608 - a fixed column
    row = _one(conn, sql, (policy,))
    if row is None:
        raise NotFound(f"no policy {policy[:70]!r}; see `keycast policy list`")
    return row[0], row[1]


# -- authorizations -----------------------------------------------------------------------------


def authorize(
    conn: sqlite3.Connection,
    cipher: Cipher,
    key: str,
    relays: Sequence[str],
    *,
    policy: str | None = None,
    max_uses: int | None = 1,
    expires_at: int | None = None,
    label: str | None = None,
    same_key: bool = False,
    clock: Clock = time.time,
) -> tuple[AuthorizationInfo, BunkerURI]:
    """Create an authorization for user key ``key`` and return it with its bunker:// URI.

    Each authorization gets a fresh bunker (transport) key, so revoking one never affects
    another and the user's npub is not exposed as the bunker pubkey; ``same_key=True`` serves
    under the user key itself, for clients that assume bunker pubkey == user pubkey. The connect
    secret is stored only as a hash: the URI returned here is the only copy.
    """
    relay_list = _check_relays(relays)
    if max_uses is not None and max_uses < 1:
        raise InvalidInput("max uses must be at least 1 (or unlimited)")
    now = int(clock())
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("the expiry time is in the past")
    if label is not None:
        _check_label(label)
    secret = generate_connect_secret()
    with mapped_errors(_path(conn)), transaction(conn):
        info = _insert_authorization(
            conn,
            cipher,
            key,
            relay_list,
            secret_hash=hash_connect_secret(secret),
            policy=policy,
            max_uses=max_uses,
            expires_at=expires_at,
            label=label,
            same_key=same_key,
            now=now,
        )
    return info, BunkerURI(pubkey=info.bunker_pubkey, relays=relay_list, secret=secret)


def _insert_authorization(
    conn: sqlite3.Connection,
    cipher: Cipher,
    key: str,
    relays: tuple[str, ...],
    *,
    secret_hash: bytes | None,
    policy: str | None,
    max_uses: int | None,
    expires_at: int | None,
    label: str | None,
    same_key: bool,
    now: int,
) -> AuthorizationInfo:
    """Insert one authorization row inside the caller's transaction (authorize and connect)."""
    user = find_key(conn, key)
    policy_id = _find_policy(conn, policy)[0] if policy is not None else None
    if same_key:
        bunker_pubkey = user.pubkey
        bunker_ciphertext = None
        existing = _one(
            conn, "SELECT id FROM authorizations WHERE bunker_pubkey = ?", (bunker_pubkey,)
        )
        if existing is not None:
            raise AlreadyExists(
                f"key {user.name!r} already has a same-key authorization (#{existing[0]}); "
                "revoking it does not free the pubkey: use a fresh bunker key instead"
            )
    else:
        bunker = SecretKey.generate()
        bunker_pubkey = bunker.pubkey_hex
        bunker_ciphertext = cipher.encrypt(bunker.to_bytes(), bunker_key_aad(bunker_pubkey))
    cursor = conn.execute(
        "INSERT INTO authorizations (kind, user_key_id, bunker_pubkey,"
        " bunker_secret_ciphertext, secret_hash, relays, policy_id, max_uses, expires_at,"
        " label, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            REGULAR,
            user.id,
            bunker_pubkey,
            bunker_ciphertext,
            secret_hash,
            json.dumps(list(relays)),
            policy_id,
            max_uses,
            expires_at,
            label,
            now,
            now,
        ),
    )
    assert cursor.lastrowid is not None
    return _get(conn, cursor.lastrowid, now)


def connect(
    conn: sqlite3.Connection,
    cipher: Cipher,
    key: str,
    uri_text: str,
    daemon_relays: Sequence[str],
    *,
    policy: str | None = None,
    expires_at: int | None = None,
    label: str | None = None,
    clock: Clock = time.time,
) -> ConnectResult:
    """Pair user key ``key`` with the client of a nostrconnect:// URI (the client-initiated flow).

    Creates an authorization with a fresh bunker key whose only client is the URI's client
    pubkey: its session is active from the start, and there is no connect secret (secret_hash
    NULL), so no one else can ever connect. Its relays are the URI's relays that the daemon
    listens on (``daemon_relays``); the response could never reach the client on any other.
    The unsolicited connect response carrying the URI's secret is queued for the daemon
    (keycast_tw.store.connects). The URI's ``perms`` grant nothing: ``policy`` decides.
    """
    try:
        uri = parse_nostrconnect_uri(uri_text)
    except NostrError as error:
        raise InvalidInput(f"not a usable nostrconnect:// URI: {error}") from None
    if uri.secret is None:
        raise InvalidInput(
            "the nostrconnect:// URI has no secret: the client could not tell the daemon's "
            "response from anyone else's (clients following NIP-46 since 2024-11 send one)"
        )
    if len(uri.secret) > MAX_CONNECT_SECRET_LENGTH:
        raise InvalidInput(
            f"the nostrconnect:// URI's secret is longer than {MAX_CONNECT_SECRET_LENGTH} "
            "characters"
        )
    # Stored in the daemon's own spelling: the daemon sends and counts the response only on
    # the relays of the authorization, and it knows its relays by their configured URLs.
    served = {_relay_identity(url): url for url in daemon_relays}
    relays = tuple(
        dict.fromkeys(
            served[_relay_identity(url)] for url in uri.relays if _relay_identity(url) in served
        )
    )
    if not relays:
        wanted = ", ".join(url[:100] for url in uri.relays)
        raise InvalidInput(
            f"none of the URI's relays ({wanted}) is one of the daemon's relays "
            f"({', '.join(daemon_relays)}): the client would never hear the daemon's response. "
            f"Add {uri.relays[0][:100]} to the daemon's relays (its --relay or KEYCAST_RELAYS), "
            "restart the daemon, then run this again"
        )
    now = int(clock())
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("the expiry time is in the past")
    if label is not None:
        _check_label(label)
    else:
        label = _label_from(uri.name)
    with mapped_errors(_path(conn)), transaction(conn):
        info = _insert_authorization(
            conn,
            cipher,
            key,
            relays,
            secret_hash=None,
            policy=policy,
            max_uses=1,
            expires_at=expires_at,
            label=label,
            same_key=False,
            now=now,
        )
        conn.execute(
            "INSERT INTO client_sessions (authorization_id, client_pubkey, connected_at,"
            " last_seen_at) VALUES (?, ?, ?, ?)",
            (info.id, uri.client_pubkey, now, now),
        )
        queue_connect_response(conn, cipher, info.id, uri.client_pubkey, uri.secret, now)
        info = _get(conn, info.id, now)
    ignored = tuple(url for url in uri.relays if _relay_identity(url) not in served)
    return ConnectResult(info, uri.client_pubkey, ignored, uri.perms)


def list_authorizations(
    conn: sqlite3.Connection, *, clock: Clock = time.time
) -> list[AuthorizationInfo]:
    now = int(clock())
    with mapped_errors(_path(conn)):
        rows = conn.execute(_AUTHORIZATION_QUERY + " ORDER BY a.id").fetchall()
    return [_authorization(row, now) for row in rows]


def get_authorization(
    conn: sqlite3.Connection, authorization_id: int, *, clock: Clock = time.time
) -> AuthorizationInfo:
    with mapped_errors(_path(conn)):
        return _get(conn, authorization_id, int(clock()))


def revoke(
    conn: sqlite3.Connection, authorization_id: int, *, clock: Clock = time.time
) -> AuthorizationInfo:
    """Revoke an authorization; revoking it again keeps the first revocation time.

    The daemon stops serving it on its next reload. Sessions stay in the database for the
    record (``uses`` in listings).
    """
    now = int(clock())
    with mapped_errors(_path(conn)), transaction(conn):
        conn.execute(
            "UPDATE authorizations SET revoked_at = ?, updated_at = ?"
            " WHERE id = ? AND revoked_at IS NULL",
            (now, now, authorization_id),
        )
        return _get(conn, authorization_id, now)


_AUTHORIZATION_QUERY = """
SELECT a.id, a.kind, k.name, k.pubkey, a.bunker_pubkey, a.bunker_secret_ciphertext IS NULL,
       a.relays, p.name, a.max_uses,
       (SELECT COUNT(*) FROM client_sessions s WHERE s.authorization_id = a.id),
       a.expires_at, a.revoked_at, a.label, a.created_at
FROM authorizations a
JOIN user_keys k ON k.id = a.user_key_id
LEFT JOIN policies p ON p.id = a.policy_id
"""


def _get(conn: sqlite3.Connection, authorization_id: int, now: int) -> AuthorizationInfo:
    row = _one(conn, _AUTHORIZATION_QUERY + " WHERE a.id = ?", (authorization_id,))
    if row is None:
        raise NotFound(f"no authorization #{authorization_id}; see `keycast authorizations`")
    return _authorization(row, now)


def _authorization(row: Sequence[Any], now: int) -> AuthorizationInfo:
    (id_, kind, key_name, user_pubkey, bunker_pubkey, same_key, relays, policy_name, max_uses,
     uses, expires_at, revoked_at, label, created_at) = row
    if revoked_at is not None:
        status = REVOKED
    elif expires_at is not None and expires_at <= now:
        status = EXPIRED
    else:
        status = LIVE
    relay_list = _json_list(relays)
    return AuthorizationInfo(
        id=id_,
        kind=kind,
        key_name=key_name,
        user_pubkey=user_pubkey,
        bunker_pubkey=bunker_pubkey,
        same_key=bool(same_key),
        relays=tuple(str(url) for url in relay_list),
        policy=policy_name,
        max_uses=max_uses,
        uses=uses,
        expires_at=expires_at,
        revoked_at=revoked_at,
        label=label,
        created_at=created_at,
        status=status,
    )


# -- validation and small helpers -----------------------------------------------------------------

_HEX64 = re.compile(r"[0-9a-fA-F]{64}")
_NSEC_GIVEN = "that is a secret key (nsec); select a key by its name, id, npub or hex pubkey"


def _check_name(name: str, what: str) -> None:
    """Names are short, printable and cannot be mistaken for an id, an npub or a hex pubkey."""
    if name.startswith("nsec1"):
        raise InvalidInput(f"a {what} name cannot be a secret key (nsec); it would be shown")
    if not name or name != name.strip():
        raise InvalidInput(f"a {what} name must be non-empty, without surrounding spaces")
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidInput(f"a {what} name has at most {MAX_NAME_LENGTH} characters")
    if not name.isprintable():
        raise InvalidInput(f"a {what} name must be printable text")
    if name.isdigit() or name.startswith("npub1") or _HEX64.fullmatch(name):
        raise InvalidInput(
            f"a {what} name cannot be a number, an npub or a hex pubkey (those select by id/key)"
        )


def _check_label(label: str) -> None:
    if len(label) > MAX_LABEL_LENGTH or not label.isprintable():
        raise InvalidInput(f"a label is printable text of at most {MAX_LABEL_LENGTH} characters")


def _label_from(name: str | None) -> str | None:
    """A label from the client's self-declared name: printable and short, or none."""
    if name is None:
        return None
    text = "".join(char for char in name if char.isprintable()).strip()
    return text[:MAX_LABEL_LENGTH] or None


def _relay_identity(url: str) -> tuple[str, str, int | None, str]:
    """What makes two relay URLs the same relay: case-insensitive scheme and host, the port,
    the path without a trailing slash (``wss://Relay.example/`` is ``wss://relay.example``)."""
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        return (url, "", None, "")
    return (parts.scheme.lower(), (parts.hostname or "").lower(), port, parts.path.rstrip("/"))


def _check_relays(relays: Sequence[str]) -> tuple[str, ...]:
    if isinstance(relays, str):
        relays = [relays]
    urls = tuple(dict.fromkeys(url.strip() for url in relays))
    if not urls:
        raise InvalidInput("an authorization needs at least one relay")
    for url in urls:
        try:
            check_relay_url(url)
        except ValueError as error:
            raise InvalidInput(str(error)) from None
    return urls


def _one(
    conn: sqlite3.Connection, sql: str, params: Sequence[object]
) -> tuple[Any, ...] | None:
    row: tuple[Any, ...] | None = conn.execute(sql, params).fetchone()
    return row


def _path(conn: sqlite3.Connection) -> str:
    """The connection's main database file, for error messages."""
    for _, name, filename in conn.execute("PRAGMA database_list"):
        if name == "main":
            return str(filename) or ":memory:"
    return "database"


def _json_object(text: str) -> dict[str, Any]:
    """A permission's config; one written by hand that is not a JSON object is shown as is
    (the engine denies everything under it)."""
    try:
        value = json.loads(text)
    except ValueError:
        value = None
    return value if isinstance(value, dict) else {"unreadable_config": str(text)[:200]}


def _json_list(text: str) -> list[Any]:
    try:
        value = json.loads(text)
    except ValueError:
        return []
    return value if isinstance(value, list) else []
