"""Tests for keycast-tw (run with trial)."""
