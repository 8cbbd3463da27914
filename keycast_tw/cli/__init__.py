"""keycast_tw.cli."""
