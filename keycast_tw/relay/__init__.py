"""keycast_tw.relay."""
