-- keycast-tw schema version 3: connect responses waiting to be sent (the nostrconnect:// flow).
-- `keycast connect KEY 'nostrconnect://...'` creates an authorization whose only client is the
-- URI's client pubkey and queues one row here, in the same transaction. The daemon that serves
-- the authorization sends the unsolicited connect response ({"result": <secret>}, NIP-44 to the
-- client, signed by the bunker key) and deletes the row once a relay accepted it, so a restart
-- in between sends it again. The secret is AES-256-GCM under the master key with
-- aad = connect_secret_aad(connect_secret_binding(authorization_id, client_pubkey)): a blob
-- copied to another row does not decrypt. Rows older than a bound (10 minutes) are dropped.

CREATE TABLE pending_connect_responses (
  authorization_id INTEGER PRIMARY KEY REFERENCES authorizations(id) ON DELETE CASCADE,
  client_pubkey TEXT NOT NULL,
  secret_ciphertext BLOB NOT NULL,
  created_at INTEGER NOT NULL
);
