"""The CLI's pure parts: WHEN parsing, tables, health endpoint targets, /status summaries."""

from __future__ import annotations

from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.cli.context import EXIT_USAGE, CliError
from keycast_tw.cli.daemon import Target, summarize, target_from_endpoint, target_from_url
from keycast_tw.cli.output import table, timestamp
from keycast_tw.cli.when import parse_when

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
