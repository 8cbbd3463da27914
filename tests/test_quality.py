"""The code base stays lint-clean, type-clean and installable as a twistd plugin."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from twisted.application.service import IServiceMaker
from twisted.plugin import getPlugins
from twisted.trial.unittest import SynchronousTestCase

ROOT = Path(__file__).resolve().parents[1]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True, timeout=600
    )


class QualityTests(SynchronousTestCase):
    def test_ruff_is_clean(self) -> None:
        """ruff reports nothing on the package, the tests, the benchmarks and the plugin."""
        result = _run("ruff", "check", "keycast_tw", "tests", "bench", "twisted")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_mypy_is_clean(self) -> None:
        """mypy (strict for nostr and signer, see pyproject.toml) reports nothing."""
        result = _run("mypy", "keycast_tw", "twisted/plugins")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)

    def test_plugin_is_discovered(self) -> None:
        """twistd finds the keycast service maker through twisted/plugins."""
        import twisted.plugins

        tapnames = {maker.tapname for maker in getPlugins(IServiceMaker, twisted.plugins)}
        self.assertIn("keycast", tapnames)

    def test_wheel_ships_plugin_and_migrations(self) -> None:
        """The built wheel carries the plugin (without twisted/__init__.py) and the SQL."""
        out = Path(self.mktemp()).resolve()
        result = _run("pip", "wheel", "--no-deps", "-w", str(out), ".")
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        (wheel,) = out.glob("keycast_tw-*.whl")
        with zipfile.ZipFile(wheel) as archive:
            names = set(archive.namelist())
        self.assertIn("twisted/plugins/keycast_plugin.py", names)
        self.assertNotIn("twisted/__init__.py", names)
        self.assertNotIn("twisted/plugins/__init__.py", names)
        self.assertIn("keycast_tw/store/migrations/0001_initial.sql", names)
        self.assertIn("keycast_tw/py.typed", names)

    def test_no_init_in_twisted_plugins(self) -> None:
        """twisted/ and twisted/plugins/ must not be packages, or they would shadow Twisted's."""
        self.assertFalse((ROOT / "twisted" / "__init__.py").exists())
        self.assertFalse((ROOT / "twisted" / "plugins" / "__init__.py").exists())
