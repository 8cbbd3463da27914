"""Building the engine's Authorization objects from rows: full start-up load and O(changes) reload.

Designed for a million rows in a few seconds and well under a gigabyte:

- nothing is decrypted or derived at load: each key is a LazyKey over its ciphertext, trusted to
  belong to the clear-text pubkey because the blob's AES-GCM associated data binds it;
- a user key is one LazyKey shared by all its authorizations (decrypted once); policies and
  relay tuples are shared objects; kinds are the model's interned constants;
- ``sessions`` stays None for the (usual) authorization nobody has connected to yet.

A bad row (unparseable relays, unknown policy, missing user key, a column holding the wrong
SQLite type...) is skipped with one ERROR line naming its id, never a crash: one bad row must not
take every other bunker down (the original's start-up was all-or-nothing, reference B12).
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import itemgetter
from typing import Any, NamedTuple

import orjson
from twisted.logger import Logger

from keycast_tw.signer.model import (
    OAUTH,
    REGULAR,
    Authorization,
    KeySource,
    LazyKey,
    Permission,
    Policy,
)
from keycast_tw.store.crypto import SecretCipher, bunker_key_aad, user_key_aad
from keycast_tw.store.errors import MasterKeyError

_AUTH_COLUMNS = (
    "id, kind, user_key_id, bunker_pubkey, bunker_secret_ciphertext, secret_hash, relays,"
    " policy_id, max_uses, expires_at, revoked_at, label"
)
_SELECT_USER_KEYS = "SELECT id, pubkey, secret_ciphertext FROM user_keys"
_KINDS = {REGULAR: REGULAR, OAUTH: OAUTH}
#: (index in _AUTH_COLUMNS, name): columns that must hold an integer or NULL...
_INTEGER_COLUMNS = (
    (2, "user_key_id"),
    (7, "policy_id"),
    (8, "max_uses"),
    (9, "expires_at"),
    (10, "revoked_at"),
)
#: ... and a blob or NULL.
_BLOB_COLUMNS = ((4, "bunker_secret_ciphertext"), (5, "secret_hash"))
_INT_OR_NONE = frozenset({int, type(None)})
_BLOB_OR_NONE = frozenset({bytes, type(None)})
_integer_fields = itemgetter(*(index for index, _ in _INTEGER_COLUMNS))
_blob_fields = itemgetter(*(index for index, _ in _BLOB_COLUMNS))
_PUBKEY = re.compile(r"[0-9a-f]{64}")
_FETCH = 10_000
_IN_CHUNK = 500
MAX_SKIP_LINES = 100
#: How long a revoked or expired authorization keeps getting error replies before it is dropped.
REFUSAL_GRACE = 7 * 24 * 3600


class StoredSecret:
    """The no-argument decrypt function a LazyKey calls: one blob, its pubkey, the cipher.

    A slotted object instead of a closure: at a million rows the difference is ~100 MB.
    """

    __slots__ = ("_aad", "_blob", "_cipher", "_pubkey")

    def __init__(
        self, cipher: SecretCipher, aad: Callable[[str], bytes], pubkey: str, blob: bytes
    ) -> None:
        self._cipher = cipher
        self._aad = aad
        self._pubkey = pubkey
        self._blob = blob

    def __call__(self) -> bytes:
        return self._cipher.decrypt(self._blob, self._aad(self._pubkey))

    def __repr__(self) -> str:
        return f"StoredSecret(pubkey={self._pubkey[:8]}…)"


class LoadResult(NamedTuple):
    authorizations: list[Authorization]
    seq: int
    skipped: int


class ReloadResult(NamedTuple):
    new_seq: int
    upserts: list[Authorization]
    removals: list[int]


class MasterKeyRotated(MasterKeyError):
    """This snapshot's key_check is not the loader's key (nor the candidate's, if one was given).

    `keycast rotate-master-key` re-encrypts every blob under a running daemon, without bumping
    change_seq. Raised before anything is built, so the registry stays as it is; StoreService
    then obtains the key the configuration gives now and runs the call again with it.
    """


class _Skip(Exception):
    """This row cannot be served; the message says why (no secrets)."""


class _Unusable:
    """A policy or user key row that cannot be used; the authorizations naming it are skipped."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class AuthorizationLoader:
    """Turns rows into Authorization objects, keeping the shared pieces between calls.

    Every method runs on the database thread with a connection; the results are handed to the
    reactor thread, which applies them to the Registry.
    """

    log = Logger()

    def __init__(self, cipher: SecretCipher, *, refusal_grace: int = REFUSAL_GRACE) -> None:
        self.cipher = cipher
        self.refusal_grace = refusal_grace
        self.skipped = 0
        self._user_keys: dict[int, KeySource | _Unusable] = {}
        self._policies: dict[int, Policy | _Unusable] = {}
        self._relays: dict[str, tuple[str, ...]] = {}
        self._logged_skips = 0
        self._verified_key_check: bytes | None = None

    def load_all(
        self, conn: sqlite3.Connection, now: int, candidate: SecretCipher | None = None
    ) -> LoadResult:
        """Every authorization to serve or to refuse, and the change_seq they reflect.

        Revoked and expired ones stay for ``refusal_grace`` seconds, so that their clients get
        an "authorization revoked/expired" error reply instead of silence (the engine checks
        liveness per request); after that they are dropped and their pubkey unsubscribed.
        ``candidate``: a new master key to switch to if the database was re-keyed (rotation).
        """
        self.skipped = 0
        self._logged_skips = 0
        self._relays = {}
        with _read_snapshot(conn):
            self._use_matching_key(conn, candidate)
            seq = _counter(conn)
            self._user_keys = {}
            self._read_user_keys(conn.execute(_SELECT_USER_KEYS))
            self._policies = {}
            self._read_policies(conn, None)
            kept = (
                "(revoked_at IS NULL OR revoked_at > :cutoff)"
                " AND (expires_at IS NULL OR expires_at > :cutoff)"
            )
            cutoff = {"cutoff": now - self.refusal_grace}
            sessions = _sessions(
                conn.execute(
                    "SELECT authorization_id, client_pubkey, logged_out_at IS NULL"  # noqa: S608
                    " FROM client_sessions WHERE authorization_id IN"
                    f" (SELECT id FROM authorizations WHERE {kept})",
                    cutoff,
                )
            )
            cursor = conn.execute(
                f"SELECT {_AUTH_COLUMNS} FROM authorizations WHERE {kept}",  # noqa: S608
                cutoff,
            )
            auths = []
            for row in _rows(cursor):
                auth = self._try_build(row, sessions)
                if auth is not None:
                    auths.append(auth)
        self._summarise_skips()
        return LoadResult(auths, seq, self.skipped)

    def reload(
        self,
        conn: sqlite3.Connection,
        since_seq: int,
        now: int,
        candidate: SecretCipher | None = None,
    ) -> ReloadResult:
        """What changed after ``since_seq``: O(changes) through the change_seq index.

        Rows revoked or expired for longer than the refusal grace, and rows that can no longer
        be served, become removals; recently revoked ones are upserts the engine refuses.
        Policies of changed rows are re-read, so a permission change takes effect.
        The master key is checked even when nothing changed, so a rotation that left the
        daemon without a matching key shows at once, not at the next change.
        """
        self.skipped = 0
        self._logged_skips = 0
        with _read_snapshot(conn):
            self._use_matching_key(conn, candidate)
            seq = _counter(conn)
            if seq <= since_seq:
                return ReloadResult(since_seq, [], [])
            rows = conn.execute(
                f"SELECT {_AUTH_COLUMNS} FROM authorizations"  # noqa: S608
                " WHERE change_seq > ? ORDER BY change_seq",
                (since_seq,),
            ).fetchall()
            live = [row for row in rows if _kept(row, now - self.refusal_grace)]
            self._refresh_user_keys(conn, sorted({row[2] for row in live if _is_int(row[2])}))
            policy_ids = sorted({row[7] for row in live if _is_int(row[7])})
            for chunk in _chunks(policy_ids):
                for policy_id in chunk:
                    self._policies.pop(policy_id, None)
                self._read_policies(conn, chunk)
            sessions: dict[int, dict[str, bool]] = {}
            for chunk in _chunks([row[0] for row in live]):
                sessions.update(
                    _sessions(
                        conn.execute(
                            "SELECT authorization_id, client_pubkey, logged_out_at IS NULL"  # noqa: S608
                            " FROM client_sessions"
                            f" WHERE authorization_id IN ({_marks(chunk)})",
                            chunk,
                        )
                    )
                )
        upserts: list[Authorization] = []
        removals: list[int] = []
        for row in rows:
            if not _kept(row, now - self.refusal_grace):
                removals.append(row[0])
                continue
            auth = self._try_build(row, sessions)
            if auth is None:
                removals.append(row[0])
            else:
                upserts.append(auth)
        self._summarise_skips()
        return ReloadResult(seq, upserts, removals)

    def _use_matching_key(self, conn: sqlite3.Connection, candidate: SecretCipher | None) -> None:
        """Build with a cipher that opens this snapshot's blobs: the current one or ``candidate``.

        key_check is read in the same snapshot as the rows, so a rotation committed between two
        reads cannot pair new blobs with the old key. Keys already built keep their own cipher
        and blob, both old, and keep working: nothing is rebuilt for a rotation. A key_check
        already verified is not decrypted again (a reload runs twice a second).
        """
        row = conn.execute("SELECT key_check FROM master_key_info WHERE id = 1").fetchone()
        if row is None or row[0] == self._verified_key_check:
            return  # verified already, or no key_check (an older database): nothing to compare
        key_check = row[0]
        for cipher in (self.cipher, candidate):
            if cipher is not None and isinstance(key_check, bytes) and cipher.matches(key_check):
                self.cipher = cipher
                self._verified_key_check = key_check
                return
        raise MasterKeyRotated("the database's master key is no longer the loaded one")

    def _try_build(
        self, row: Sequence[Any], sessions: dict[int, dict[str, bool]]
    ) -> Authorization | None:
        """The row's Authorization, or None after logging why it is skipped.

        TypeError and ValueError are caught too, as a last defence: a row with a value nobody
        foresaw must cost that row, not the load (a failed load crash-loops the start and a
        failed reload never advances, losing every later revocation). Only the error's class is
        logged: its message could quote the row's values.
        """
        try:
            return self._build(row, sessions)
        except _Skip as skip:
            reason = str(skip)
        except (TypeError, ValueError) as error:
            reason = f"unexpected {type(error).__name__} while reading the row"
        self._skip(row[0], reason)
        return None

    def _build(self, row: Sequence[Any], sessions: dict[int, dict[str, bool]]) -> Authorization:
        (auth_id, kind, user_key_id, bunker_pubkey, ciphertext, secret_hash, relays_text,
         policy_id, max_uses, expires_at, revoked_at, label) = row  # fmt: skip
        _check_types(row)
        shared_kind = _KINDS.get(kind)
        if shared_kind is None:
            raise _Skip(f"unknown kind {kind!r}")
        user_key = self._user_keys.get(user_key_id)
        if user_key is None:
            raise _Skip(f"user key {user_key_id} does not exist")
        if isinstance(user_key, _Unusable):
            raise _Skip(f"user key {user_key_id}: {user_key.reason}")
        if not isinstance(bunker_pubkey, str) or not _PUBKEY.fullmatch(bunker_pubkey):
            raise _Skip("bunker_pubkey is not 64 lowercase hex characters")
        bunker_key: KeySource
        if ciphertext is None:
            if bunker_pubkey != user_key.pubkey:
                raise _Skip("no bunker secret and bunker_pubkey is not the user key's pubkey")
            bunker_key = user_key
        else:
            bunker_key = LazyKey(
                bunker_pubkey,
                StoredSecret(self.cipher, bunker_key_aad, bunker_pubkey, ciphertext),
            )
        policy: Policy | None = None
        if policy_id is not None:
            found = self._policies.get(policy_id)
            if found is None:
                raise _Skip(f"policy {policy_id} does not exist")
            if isinstance(found, _Unusable):
                raise _Skip(f"policy {policy_id}: {found.reason}")
            policy = found
        return Authorization(
            id=auth_id,
            kind=shared_kind,
            bunker_key=bunker_key,
            user_key=user_key,
            secret_hash=secret_hash,
            relays=self._parse_relays(relays_text),
            policy=policy,
            max_uses=max_uses,
            expires_at=expires_at,
            revoked_at=revoked_at,
            label=label,
            sessions=sessions.get(auth_id),
        )

    def _parse_relays(self, text: object) -> tuple[str, ...]:
        if not isinstance(text, str):
            raise _Skip("relays is not text")
        relays = self._relays.get(text)
        if relays is None:
            try:
                value = orjson.loads(text)
            except orjson.JSONDecodeError:
                raise _Skip("relays is not valid JSON") from None
            if not isinstance(value, list) or not all(isinstance(url, str) for url in value):
                raise _Skip("relays is not a JSON array of strings")
            relays = tuple(value)
            self._relays[text] = relays
        return relays

    def _refresh_user_keys(self, conn: sqlite3.Connection, key_ids: Sequence[int]) -> None:
        """Re-read the user keys that changed rows name, not only those missing from the cache.

        user_keys.id has no AUTOINCREMENT: after a key is deleted by hand, SQLite gives its id
        to the next key, and a cache keyed by id alone would sign the new user's requests with
        the deleted user's key. Few ids per reload, so this costs little.
        """
        for chunk in _chunks(key_ids):
            rows = conn.execute(
                f"{_SELECT_USER_KEYS} WHERE id IN ({_marks(chunk)})", chunk
            ).fetchall()
            self._read_user_keys(rows)
            for key_id in set(chunk).difference(row[0] for row in rows):
                self._user_keys.pop(key_id, None)  # deleted: "user key N does not exist"

    def _read_user_keys(self, cursor: Iterable[Sequence[Any]]) -> None:
        """Cache the rows' user keys.

        A cached key whose pubkey is the row's is kept: it is the same secret, possibly already
        decrypted and shared by loaded authorizations (and, after a master key rotation, its old
        blob still opens with the old cipher it holds).
        """
        for key_id, pubkey, blob in cursor:
            cached = self._user_keys.get(key_id)
            if cached is None or isinstance(cached, _Unusable) or cached.pubkey != pubkey:
                self._user_keys[key_id] = self._user_key(pubkey, blob)

    def _user_key(self, pubkey: object, blob: object) -> KeySource | _Unusable:
        """A LazyKey for a user_keys row, or why the row cannot be one (checked, not assumed:
        a TEXT blob or a malformed pubkey would otherwise raise for the whole load)."""
        if not isinstance(pubkey, str) or not _PUBKEY.fullmatch(pubkey):
            return _Unusable("pubkey is not 64 lowercase hex characters")
        if not isinstance(blob, bytes):
            return _Unusable("secret_ciphertext is not a blob")
        return LazyKey(pubkey, StoredSecret(self.cipher, user_key_aad, pubkey, blob))

    def _read_policies(self, conn: sqlite3.Connection, ids: Sequence[int] | None) -> None:
        where = "" if ids is None else f" WHERE id IN ({_marks(ids)})"
        params: Sequence[int] = () if ids is None else ids
        query = f"SELECT id, name FROM policies{where}"  # noqa: S608
        names = dict(conn.execute(query, params).fetchall())
        where = "" if ids is None else f" WHERE policy_id IN ({_marks(ids)})"
        permissions: dict[int, list[Permission]] = {policy_id: [] for policy_id in names}
        bad: dict[int, str] = {}
        for policy_id, identifier, config_text in conn.execute(
            f"SELECT policy_id, identifier, config FROM policy_permissions{where}"  # noqa: S608
            " ORDER BY id",
            params,
        ):
            try:
                config = orjson.loads(config_text)
            except (orjson.JSONDecodeError, TypeError):
                config = None
            if not isinstance(config, dict):
                bad[policy_id] = f"permission {identifier!r} config is not a JSON object"
                continue
            permissions.setdefault(policy_id, []).append(Permission(identifier, config))
        for policy_id, name in names.items():
            if policy_id in bad:
                self._policies[policy_id] = _Unusable(bad[policy_id])
            else:
                self._policies[policy_id] = Policy(name, tuple(permissions[policy_id]))

    def _skip(self, authorization_id: int, reason: str) -> None:
        self.skipped += 1
        if self._logged_skips < MAX_SKIP_LINES:
            self._logged_skips += 1
            self.log.error(
                "Skipping authorization {authorization_id}: {reason}",
                authorization_id=authorization_id,
                reason=reason,
            )

    def _summarise_skips(self) -> None:
        if self.skipped > self._logged_skips:
            self.log.error(
                "Skipped {skipped} authorizations in total ({unlisted} not listed above)",
                skipped=self.skipped,
                unlisted=self.skipped - self._logged_skips,
            )


def _kept(row: Sequence[Any], cutoff: int) -> bool:
    """Whether a row belongs in the registry: live, or revoked/expired after ``cutoff``.

    A row whose dates are not integers is kept, so that _build skips it with its reason (in a
    reload that makes it a removal); comparing them would raise TypeError for the whole reload.
    """
    expires_at, revoked_at = row[9], row[10]
    if not (_is_int_or_none(expires_at) and _is_int_or_none(revoked_at)):
        return True
    return (revoked_at is None or revoked_at > cutoff) and (
        expires_at is None or expires_at > cutoff
    )


def _check_types(row: Sequence[Any]) -> None:
    """Raise _Skip unless the columns used for arithmetic and crypto have the schema's types.

    SQLite stores whatever it is given: a date typed in the sqlite3 shell ('2030-01-01') stays
    TEXT in an INTEGER column, 'oops' stays TEXT in a BLOB column. The first test is one
    C-level set operation per kind of column (this runs for every row of a million-row load:
    sqlite3 returns exact ints, never bools); only a failing row is examined column by column.
    """
    if _INT_OR_NONE.issuperset(map(type, _integer_fields(row))) and _BLOB_OR_NONE.issuperset(
        map(type, _blob_fields(row))
    ):
        return
    for index, column in _INTEGER_COLUMNS:
        if not _is_int_or_none(row[index]):
            raise _Skip(f"{column} is not an integer")
    for index, column in _BLOB_COLUMNS:
        if row[index] is not None and not isinstance(row[index], bytes):
            raise _Skip(f"{column} is not a blob")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_int_or_none(value: object) -> bool:
    return value is None or _is_int(value)


def _counter(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT value FROM change_counter WHERE id = 1").fetchone()[0])


def _sessions(cursor: Iterable[Sequence[Any]]) -> dict[int, dict[str, bool]]:
    sessions: dict[int, dict[str, bool]] = {}
    for auth_id, client_pubkey, active in cursor:
        sessions.setdefault(auth_id, {})[client_pubkey] = bool(active)
    return sessions


def _rows(cursor: sqlite3.Cursor) -> Iterator[Sequence[Any]]:
    while batch := cursor.fetchmany(_FETCH):
        yield from batch


def _chunks(values: Sequence[int]) -> Iterator[Sequence[int]]:
    for start in range(0, len(values), _IN_CHUNK):
        yield values[start : start + _IN_CHUNK]


def _marks(values: Sequence[object]) -> str:
    return ", ".join("?" * len(values))


@contextlib.contextmanager
def _read_snapshot(conn: sqlite3.Connection) -> Iterator[None]:
    """One read transaction, so the counter and the rows come from the same snapshot."""
    if conn.in_transaction:
        conn.commit()
    conn.execute("BEGIN")
    try:
        yield
    finally:
        conn.rollback()
