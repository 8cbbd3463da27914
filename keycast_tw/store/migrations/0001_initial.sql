-- keycast-tw schema version 1 (contract: /work/contract/store-schema.md).
-- Timestamps are INTEGER unix seconds; hex pubkeys are lowercase 64-char TEXT.

CREATE TABLE master_key_info (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  kind TEXT NOT NULL,
  wrapped_data_key BLOB,
  key_check BLOB NOT NULL,
  created_at INTEGER NOT NULL
);

CREATE TABLE user_keys (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  pubkey TEXT NOT NULL UNIQUE,
  secret_ciphertext BLOB NOT NULL,
  created_at INTEGER NOT NULL
);

CREATE TABLE policies (
  id INTEGER PRIMARY KEY,
  name TEXT NOT NULL UNIQUE,
  created_at INTEGER NOT NULL
);

CREATE TABLE policy_permissions (
  id INTEGER PRIMARY KEY,
  policy_id INTEGER NOT NULL REFERENCES policies(id) ON DELETE CASCADE,
  identifier TEXT NOT NULL,
  config TEXT NOT NULL DEFAULT '{}'
);

CREATE TABLE authorizations (
  id INTEGER PRIMARY KEY,
  kind TEXT NOT NULL DEFAULT 'regular' CHECK (kind IN ('regular', 'oauth')),
  user_key_id INTEGER NOT NULL REFERENCES user_keys(id),
  bunker_pubkey TEXT NOT NULL UNIQUE,
  bunker_secret_ciphertext BLOB,
  secret_hash BLOB,
  relays TEXT NOT NULL DEFAULT '[]',
  policy_id INTEGER REFERENCES policies(id),
  max_uses INTEGER,
  expires_at INTEGER,
  revoked_at INTEGER,
  label TEXT,
  created_at INTEGER NOT NULL,
  updated_at INTEGER NOT NULL,
  change_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX authorizations_change_seq ON authorizations(change_seq);

CREATE TABLE client_sessions (
  authorization_id INTEGER NOT NULL REFERENCES authorizations(id) ON DELETE CASCADE,
  client_pubkey TEXT NOT NULL,
  connected_at INTEGER NOT NULL,
  last_seen_at INTEGER NOT NULL,
  logged_out_at INTEGER,
  PRIMARY KEY (authorization_id, client_pubkey)
);

CREATE TABLE activity_log (
  id INTEGER PRIMARY KEY,
  authorization_id INTEGER,
  client_pubkey TEXT,
  method TEXT NOT NULL,
  event_kind INTEGER,
  event_id TEXT,
  outcome TEXT NOT NULL,
  error TEXT,
  created_at INTEGER NOT NULL
);

CREATE TABLE seen_requests (
  event_id TEXT PRIMARY KEY,
  created_at INTEGER NOT NULL
) WITHOUT ROWID;
CREATE INDEX seen_requests_created_at ON seen_requests(created_at);

CREATE TABLE change_counter (id INTEGER PRIMARY KEY CHECK (id = 1), value INTEGER NOT NULL);
INSERT INTO change_counter VALUES (1, 0);

-- Change tracking: whatever process writes (CLI, sqlite3 shell, another API), the daemon's
-- incremental reload sees it with SELECT ... WHERE change_seq > :last. SQLite serialises writers
-- and the counter moves inside the writer's transaction, so commit order equals counter order.

CREATE TRIGGER authorizations_insert_seq AFTER INSERT ON authorizations
BEGIN
  UPDATE change_counter SET value = value + 1 WHERE id = 1;
  UPDATE authorizations SET change_seq = (SELECT value FROM change_counter WHERE id = 1)
   WHERE id = NEW.id;
END;

-- Every column except change_seq itself and bunker_secret_ciphertext: re-encrypting a key under a
-- new master key (rotation) changes no behaviour, and bumping a million rows would make the next
-- reload rebuild every authorization.
CREATE TRIGGER authorizations_update_seq AFTER UPDATE OF
  id, kind, user_key_id, bunker_pubkey, secret_hash, relays, policy_id, max_uses, expires_at,
  revoked_at, label, created_at, updated_at ON authorizations
BEGIN
  UPDATE change_counter SET value = value + 1 WHERE id = 1;
  UPDATE authorizations SET change_seq = (SELECT value FROM change_counter WHERE id = 1)
   WHERE id = NEW.id;
END;

CREATE TRIGGER policy_permissions_insert_seq AFTER INSERT ON policy_permissions
BEGIN
  UPDATE change_counter SET value = value + 1 WHERE id = 1;
  UPDATE authorizations SET change_seq = (SELECT value FROM change_counter WHERE id = 1)
   WHERE policy_id = NEW.policy_id;
END;

CREATE TRIGGER policy_permissions_update_seq AFTER UPDATE ON policy_permissions
BEGIN
  UPDATE change_counter SET value = value + 1 WHERE id = 1;
  UPDATE authorizations SET change_seq = (SELECT value FROM change_counter WHERE id = 1)
   WHERE policy_id IN (OLD.policy_id, NEW.policy_id);
END;

CREATE TRIGGER policy_permissions_delete_seq AFTER DELETE ON policy_permissions
BEGIN
  UPDATE change_counter SET value = value + 1 WHERE id = 1;
  UPDATE authorizations SET change_seq = (SELECT value FROM change_counter WHERE id = 1)
   WHERE policy_id = OLD.policy_id;
END;

CREATE TRIGGER policies_rename_seq AFTER UPDATE OF name ON policies
BEGIN
  UPDATE change_counter SET value = value + 1 WHERE id = 1;
  UPDATE authorizations SET change_seq = (SELECT value FROM change_counter WHERE id = 1)
   WHERE policy_id = NEW.id;
END;
