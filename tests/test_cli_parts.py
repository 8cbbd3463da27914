"""The CLI in-process: WHEN parsing, tables, endpoint targets, /status summaries, run()."""

from __future__ import annotations

import io
from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.cli.context import EXIT_USAGE, CliError, Context, wait_for
from keycast_tw.cli.daemon import Target, summarize, target_from_endpoint, target_from_url
from keycast_tw.cli.main import run
from keycast_tw.cli.output import table, timestamp
from keycast_tw.cli.when import parse_when
from keycast_tw.config import config_from
from keycast_tw.store.errors import MasterKeyError

NOW = 1_700_000_000


class WhenTests(SynchronousTestCase):
    def test_durations(self) -> None:
        """Durations count from now and add up their parts."""
        self.assertEqual(parse_when("30d", NOW), NOW + 30 * 86400)
        self.assertEqual(parse_when("12h", NOW), NOW + 12 * 3600)
        self.assertEqual(parse_when("90m", NOW), NOW + 90 * 60)
        self.assertEqual(parse_when("1w", NOW), NOW + 7 * 86400)
        self.assertEqual(parse_when("1d12h", NOW), NOW + 36 * 3600)
        self.assertEqual(parse_when(" 45S ", NOW), NOW + 45)

    def test_iso_datetimes(self) -> None:
        """ISO-8601 dates and times; no zone means UTC, an offset is honoured."""
        self.assertEqual(
            parse_when("2030-01-31", NOW), int(datetime(2030, 1, 31, tzinfo=UTC).timestamp())
        )
        self.assertEqual(
            parse_when("2030-01-31T18:00:00Z", NOW),
            int(datetime(2030, 1, 31, 18, tzinfo=UTC).timestamp()),
        )
        self.assertEqual(
            parse_when("2030-01-31T18:00:00+02:00", NOW),
            int(datetime(2030, 1, 31, 16, tzinfo=UTC).timestamp()),
        )

    def test_rejects_nonsense(self) -> None:
        """Anything else is a ValueError whose message shows both accepted forms."""
        for bad in ("tomorrow", "30", "0d", "3x", ""):
            error = self.assertRaises(ValueError, parse_when, bad, NOW)
            self.assertTrue("30d" in str(error) or "zero" in str(error), str(error))


class OutputTests(SynchronousTestCase):
    def test_table_aligns_columns(self) -> None:
        """Columns are padded to the widest cell; lines carry no trailing spaces."""
        lines = table(("ID", "NAME"), [(1, "alice"), (10, "b")])
        self.assertEqual(lines, ["ID  NAME", "1   alice", "10  b"])

    def test_timestamp_is_utc(self) -> None:
        """Timestamps print in UTC with a Z; None prints the placeholder."""
        self.assertEqual(timestamp(0), "1970-01-01T00:00:00Z")
        self.assertEqual(timestamp(None, empty="never"), "never")


class TargetTests(SynchronousTestCase):
    def test_tcp_endpoints(self) -> None:
        """A tcp endpoint is dialled on its interface, or loopback when it listens everywhere."""
        self.assertEqual(
            target_from_endpoint("tcp:8080:interface=127.0.0.1"),
            Target("tcp:8080:interface=127.0.0.1", host="127.0.0.1", port=8080),
        )
        self.assertEqual(target_from_endpoint("tcp:9000").host, "127.0.0.1")
        self.assertEqual(target_from_endpoint("tcp:9000:interface=0.0.0.0").host, "127.0.0.1")
        self.assertEqual(target_from_endpoint("tcp6:9000:interface=\\:\\:").host, "::1")
        self.assertEqual(target_from_endpoint("tcp6:9000:interface=\\:\\:1").host, "::1")

    def test_unix_endpoint(self) -> None:
        """A unix endpoint is dialled on its socket path."""
        self.assertEqual(target_from_endpoint("unix:/run/k.sock").unix_path, "/run/k.sock")

    def test_undialable_endpoints_ask_for_url(self) -> None:
        """ssl and systemd endpoints cannot be dialled from the string: a usage error says --url."""
        for endpoint in ("systemd:domain=INET:index=0", "ssl:443:privateKey=k.pem"):
            error = self.assertRaises(CliError, target_from_endpoint, endpoint)
            self.assertIn("--url", str(error))
            self.assertEqual(error.status, EXIT_USAGE)

    def test_url(self) -> None:
        """--url takes http(s) URLs with a default port."""
        self.assertEqual(target_from_url("http://db.internal").port, 80)
        target = target_from_url("https://keycast.example:8443")
        self.assertEqual((target.host, target.port, target.tls), ("keycast.example", 8443, True))
        self.assertRaises(CliError, target_from_url, "tcp:8080")


class SummaryTests(SynchronousTestCase):
    def test_summary_of_a_status_document(self) -> None:
        """Version and uptime lead; mappings become k=v lines; per-relay entries get a line each."""
        lines = summarize(
            {
                "version": "0.1.0",
                "uptime_seconds": 3725.2,
                "authorizations": {"total": 3, "regular": 3, "oauth": 0},
                "relays": [
                    {"url": "wss://a.example", "connected": True, "reconnects": 2},
                    {"url": "wss://b.example", "connected": False, "reconnects": 9},
                ],
                "last_reload": 1700000000,
            }
        )
        self.assertEqual(
            lines,
            [
                "keycast-tw 0.1.0, up 1h 2m",
                "authorizations: total=3, regular=3, oauth=0",
                "relays:",
                "  wss://a.example: connected=true, reconnects=2",
                "  wss://b.example: connected=false, reconnects=9",
                "last_reload: 1700000000",
            ],
        )

    def test_summary_of_relays_keyed_by_url(self) -> None:
        """Per-relay state given as a mapping by URL is listed the same way."""
        lines = summarize({"version": "1", "relays": {"wss://a.example": {"subscribed": True}}})
        self.assertEqual(lines, ["keycast-tw 1", "relays:", "  wss://a.example: subscribed=true"])


class WaitForTests(SynchronousTestCase):
    def test_finished_coroutine(self) -> None:
        """A coroutine that never waits (the file key) completes without running a reactor."""

        async def answer() -> int:
            return 42

        self.assertEqual(wait_for(answer()), 42)

    def test_failure_propagates(self) -> None:
        """The coroutine's exception is raised as itself, for main() to map to an exit code."""

        async def broken() -> int:
            raise MasterKeyError("master key does not match this database")

        error = self.assertRaises(MasterKeyError, wait_for, broken())
        self.assertIn("does not match", str(error))


class RunTests(SynchronousTestCase):
    def test_help_and_usage_go_to_the_given_streams(self) -> None:
        """run() writes argparse's help and usage errors to its own streams, not sys's."""
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run(["--help"], {}, io.StringIO(), out, err), 0)
        self.assertIn("usage: keycast", out.getvalue())
        out, err = io.StringIO(), io.StringIO()
        self.assertEqual(run([], {}, io.StringIO(), out, err), 2)
        self.assertIn("required", err.getvalue())

    def test_config_errors_are_usage_errors(self) -> None:
        """An invalid environment value exits 2 with one line naming the variable."""
        out, err = io.StringIO(), io.StringIO()
        status = run(["key", "list"], {"KEYCAST_SHARD": "3/2"}, io.StringIO(), out, err)
        self.assertEqual(status, 2)
        self.assertEqual(err.getvalue().count("\n"), 1)
        self.assertIn("KEYCAST_SHARD", err.getvalue())


class ContextTests(SynchronousTestCase):
    def test_repr_leaves_out_the_environment(self) -> None:
        """A Context in a log or traceback never shows environment values (credentials)."""
        environ = {"GOOGLE_API_TOKEN": "s3cret-token-value"}
        ctx = Context(
            config_from({}, {}), environ, io.StringIO(), io.StringIO(), io.StringIO()
        )
        self.assertNotIn("s3cret-token-value", repr(ctx))
