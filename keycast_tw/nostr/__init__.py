"""Pure Nostr protocol code for keycast-tw: no Twisted, no I/O, safe to call from any thread.

Modules: ``keys`` (secp256k1, BIP-340, raw-x ECDH), ``event`` (NIP-01 ids and signatures),
``nip04`` and ``nip44`` (encryption), ``nip19`` (bech32 entities), ``nip46`` (remote-signing
messages and connection URIs), ``errors`` (the typed exceptions all of them raise).
"""
