"""keycast-tw: a NIP-46 remote signer ("bunker") daemon for Nostr, on Twisted."""

__version__ = "0.1.0"
