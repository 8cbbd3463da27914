"""The CLI in-process: WHEN parsing, tables, endpoint targets, /status summaries, run()."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime

from twisted.trial.unittest import SynchronousTestCase

from keycast_tw.cli.authorizations import daemon_relays
from keycast_tw.cli.context import EXIT_USAGE, CliError, Context, wait_for
from keycast_tw.cli.daemon import (
    RELAY_LOOKUP_TIMEOUT,
    Target,
    Unreachable,
    ask_relays,
    relays_in_status,
    summarize,
    target_from_endpoint,
    target_from_url,
)
from keycast_tw.cli.main import run
from keycast_tw.cli.output import table, timestamp
from keycast_tw.cli.when import parse_when
from keycast_tw.config import DEFAULT_RELAYS, config_from
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
            },
            now=NOW,
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
        lines = summarize(
            {"version": "1", "relays": {"wss://a.example": {"subscribed": True}}}, now=NOW
        )
        self.assertEqual(lines, ["keycast-tw 1", "relays:", "  wss://a.example: subscribed=true"])

    def test_times_and_durations_are_readable(self) -> None:
        """Epoch seconds (``*_at``) print as UTC ISO-8601 with their age, never as raw floats;
        never-set ones as ``never``; durations (``seconds``) rounded with a unit."""
        lines = summarize(
            {
                "version": "0.1.0",
                "uptime_seconds": 12.3456,
                "relays": [
                    {
                        "url": "wss://a.example",
                        "connected": True,
                        "last_event_at": None,
                        "last_connected_at": NOW - 12.8179433,
                    }
                ],
                "last_request_at": NOW - 3 * 3600 - 5 * 60 - 0.5,
                "last_reload": {
                    "at": NOW - 0.2,
                    "kind": "reload",
                    "seconds": 0.0024178,
                    "reconcile_failed_at": None,
                },
                "load": {"seconds": 0.35, "total_seconds": 75.2, "ahead_at": NOW + 4},
                "odd_at": 1e20,
            },
            now=NOW,
        )
        self.assertEqual(
            lines,
            [
                "keycast-tw 0.1.0, up 12s",
                "relays:",
                "  wss://a.example: connected=true, last_event_at=never, "
                "last_connected_at=2023-11-14T22:13:07Z (12s ago)",
                "last_request_at: 2023-11-14T19:08:19Z (3h 5m ago)",
                "last_reload: at=2023-11-14T22:13:19Z (0s ago), kind=reload, seconds=2.4 ms, "
                "reconcile_failed_at=never",
                "load: seconds=350 ms, total_seconds=1m 15s, ahead_at=2023-11-14T22:13:24Z (in 4s)",
                "odd_at: 1e+20",
            ],
        )
        self.assertNotIn("1699", "\n".join(lines))


def _status(*urls: object) -> bytes:
    return json.dumps({"version": "1", "relays": [{"url": url} for url in urls]}).encode()


class RelayLookupTests(SynchronousTestCase):
    """``authorize``/``connect`` ask the daemon for its relays (``relays[].url`` of /status)."""

    def setUp(self) -> None:
        self.asked: list[tuple[Target, str, float]] = []
        self.answer: tuple[int, bytes] | Exception = (200, _status("ws://127.0.0.1:7777"))
        self.stderr = io.StringIO()

    def fetch(self, target: Target, path: str, timeout: float) -> tuple[int, bytes]:
        self.asked.append((target, path, timeout))
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer

    def context(self, environ: dict[str, str]) -> Context:
        return Context(
            config_from({}, environ), environ, io.StringIO(), io.StringIO(), self.stderr
        )

    def test_relays_in_status(self) -> None:
        """The URLs in order, each once; entries that are not relay URLs are left out; a
        document naming none is Unreachable (the caller falls back and says so)."""
        status = {
            "relays": [
                {"url": "ws://127.0.0.1:7777"},
                {"url": "wss://b.example"},
                {"url": "ws://127.0.0.1:7777"},
                {"url": "https://not-a-relay.example"},
                {"url": "wss://bad\x1b.example"},
                {"connected": True},
                "junk",
            ]
        }
        self.assertEqual(relays_in_status(status), ("ws://127.0.0.1:7777", "wss://b.example"))
        self.assertEqual(
            relays_in_status({"relays": {"wss://a.example": {"connected": True}}}),
            ("wss://a.example",),
        )
        for bad in ({}, {"relays": []}, {"relays": "wss://a.example"}):
            self.assertRaises(Unreachable, relays_in_status, bad)

    def test_ask_relays(self) -> None:
        """GET /status; an error answer or a body that is not a JSON object is Unreachable."""
        target = Target("tcp:8080", port=8080)
        self.assertEqual(ask_relays(target, 1.5, self.fetch), ("ws://127.0.0.1:7777",))
        self.assertEqual(self.asked, [(target, "/status", 1.5)])
        for answer in ((500, b'{"error": "status unavailable"}'), (200, b"<html>"), (200, b"[]")):
            self.answer = answer
            self.assertRaises(Unreachable, ask_relays, target, 1.5, self.fetch)

    def test_from_the_daemon(self) -> None:
        """Without KEYCAST_RELAYS the daemon's own relays are used, asked for at the health
        endpoint (as `keycast status` finds it) with a short timeout; nothing is printed."""
        ctx = self.context({"KEYCAST_HEALTH": "tcp:9123", "KEYCAST_CHECK_TIMEOUT": "30"})
        known = daemon_relays(ctx, None, explicit=False, choose="CHOOSE", fetcher=self.fetch)
        self.assertEqual(known.urls, ("ws://127.0.0.1:7777",))
        ((target, path, timeout),) = self.asked
        self.assertEqual((target.host, target.port, path), ("127.0.0.1", 9123, "/status"))
        self.assertEqual(timeout, RELAY_LOOKUP_TIMEOUT)
        self.assertEqual(self.stderr.getvalue(), "")
        del self.asked[:]
        daemon_relays(ctx, "http://10.0.0.5:81", explicit=False, choose="", fetcher=self.fetch)
        self.assertEqual((self.asked[0][0].host, self.asked[0][0].port), ("10.0.0.5", 81))

    def test_environment_wins(self) -> None:
        """KEYCAST_RELAYS (or BUNKER_RELAYS) given to the CLI is used without asking anyone."""
        for name in ("KEYCAST_RELAYS", "BUNKER_RELAYS"):
            ctx = self.context({name: "wss://env.example"})
            known = daemon_relays(ctx, None, explicit=False, choose="", fetcher=self.fetch)
            self.assertEqual((known.urls, known.source), (("wss://env.example",), name))
        self.assertEqual(self.asked, [])

    def test_unreachable_falls_back_to_the_defaults_with_a_warning(self) -> None:
        """No answer: the defaults, and one stderr line saying so and how to choose."""
        self.answer = Unreachable("[Errno 111] Connection refused")
        ctx = self.context({"KEYCAST_HEALTH": "tcp:9123"})
        known = daemon_relays(
            ctx, None, explicit=False, choose="use --relay or KEYCAST_RELAYS", fetcher=self.fetch
        )
        self.assertEqual(known.urls, DEFAULT_RELAYS)
        warning = self.stderr.getvalue()
        self.assertEqual(warning.count("\n"), 1)
        self.assertIn("cannot ask the daemon at tcp:9123 for its relays", warning)
        self.assertIn("Connection refused", warning)
        self.assertIn("using the default relays " + ", ".join(DEFAULT_RELAYS), warning)
        self.assertIn("use --relay or KEYCAST_RELAYS", warning)

    def test_undialable_endpoint_falls_back_too(self) -> None:
        """A health endpoint this host cannot dial is no error here: defaults and a warning."""
        ctx = self.context({"KEYCAST_HEALTH": "systemd:domain=INET:index=0"})
        known = daemon_relays(ctx, None, explicit=False, choose="", fetcher=self.fetch)
        self.assertEqual(known.urls, DEFAULT_RELAYS)
        self.assertIn("--url", self.stderr.getvalue())
        self.assertEqual(self.asked, [])

    def test_explicit_relays_are_not_checked_when_unreachable(self) -> None:
        """With --relay, an unreachable daemon means nothing to check against (a note)."""
        self.answer = Unreachable("timed out")
        ctx = self.context({"KEYCAST_HEALTH": "tcp:9123"})
        known = daemon_relays(ctx, None, explicit=True, choose="", fetcher=self.fetch)
        self.assertIsNone(known.urls)
        self.assertIn("not checked", self.stderr.getvalue())
        self.assertNotIn("default relays", self.stderr.getvalue())


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
