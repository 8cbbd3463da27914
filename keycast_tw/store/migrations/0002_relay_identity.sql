-- keycast-tw schema version 2: the daemon's own key for NIP-42 relay AUTH.
-- One row, created once (keycast init, or the daemon's first start) and kept across restarts,
-- so that a relay which allow-lists the signer's pubkey keeps accepting it. The secret is
-- AES-256-GCM under the master key with aad = relay_identity_aad(pubkey), like every other key.

CREATE TABLE relay_identity (
  id INTEGER PRIMARY KEY CHECK (id = 1),
  pubkey TEXT NOT NULL,
  secret_ciphertext BLOB NOT NULL,
  created_at INTEGER NOT NULL
);
