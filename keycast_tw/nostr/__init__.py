"""keycast_tw.nostr."""
