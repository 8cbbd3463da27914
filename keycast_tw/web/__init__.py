"""keycast_tw.web."""
