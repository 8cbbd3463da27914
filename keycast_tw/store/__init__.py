"""keycast_tw.store."""
