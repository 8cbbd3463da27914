"""Tunables of the relay pool, validated once so that the rest of the package can trust them."""

from __future__ import annotations

from dataclasses import dataclass

#: Automatic firehose threshold, in chunks: above this many ``#p`` subscriptions per relay we
#: switch to ``{"kinds":[24133]}``. strfry's default ``maxSubsPerConnection`` is 20, so 10 keeps
#: us well inside the commonest relay limit while leaving room for other subscriptions.
AUTO_FIREHOSE_CHUNKS = 10


@dataclass(frozen=True)
class RelayOptions:
    """Reconnect, keep-alive, subscription and publishing settings shared by every relay.

    Times are in seconds. ``firehose_threshold=None`` means automatic:
    ``AUTO_FIREHOSE_CHUNKS * p_chunk_size`` bunker pubkeys.
    """

    initial_delay: float = 1.0
    max_delay: float = 60.0
    factor: float = 1.5
    handshake_timeout: float = 15.0
    auto_ping_interval: float = 30.0
    auto_ping_timeout: float = 15.0
    max_message_size: int = 1024 * 1024
    p_chunk_size: int = 200
    firehose_threshold: int | None = None
    # Short: a new authorization must be served within one reload interval (0.5 s), and the
    # registry already batches each reload into one change, so this only merges rapid bursts.
    resubscribe_debounce: float = 0.1
    since_skew: float = 300.0
    publish_queue_limit: int = 1000
    # Beyond the contract's list; each has a safe default.
    max_lookback: float = 900.0
    publish_queue_max_age: float = 120.0
    ok_timeout: float = 10.0
    eose_timeout: float = 30.0
    dedup_size: int = 50_000
    max_events_per_second: float = 1000.0
    # On stop: how long to wait for relays to answer our close frame before dropping TCP.
    close_timeout: float = 2.0
    # The reconnect backoff starts over only after a connection stayed up this long: a relay
    # that accepts the upgrade and hangs up at once is not re-dialled every initial_delay.
    stable_connection: float = 30.0

    def __post_init__(self) -> None:
        positive = {
            "initial_delay": self.initial_delay,
            "max_delay": self.max_delay,
            "handshake_timeout": self.handshake_timeout,
            "max_message_size": self.max_message_size,
            "p_chunk_size": self.p_chunk_size,
            "publish_queue_limit": self.publish_queue_limit,
            "publish_queue_max_age": self.publish_queue_max_age,
            "ok_timeout": self.ok_timeout,
            "eose_timeout": self.eose_timeout,
            "dedup_size": self.dedup_size,
            "max_events_per_second": self.max_events_per_second,
            "close_timeout": self.close_timeout,
            "stable_connection": self.stable_connection,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"relay option {name} must be > 0, got {value!r}")
        non_negative = {
            "auto_ping_interval": self.auto_ping_interval,
            "auto_ping_timeout": self.auto_ping_timeout,
            "resubscribe_debounce": self.resubscribe_debounce,
            "since_skew": self.since_skew,
            "max_lookback": self.max_lookback,
        }
        for name, value in non_negative.items():
            if value < 0:
                raise ValueError(f"relay option {name} must be >= 0, got {value!r}")
        if self.factor < 1:
            raise ValueError(f"relay option factor must be >= 1, got {self.factor!r}")
        if self.max_delay < self.initial_delay:
            raise ValueError("relay option max_delay must be >= initial_delay")
        if self.firehose_threshold is not None and self.firehose_threshold < 0:
            raise ValueError("relay option firehose_threshold must be >= 0 or None (automatic)")

    @property
    def effective_firehose_threshold(self) -> int:
        """Bunker count above which one firehose subscription replaces the ``#p`` chunks."""
        if self.firehose_threshold is None:
            return AUTO_FIREHOSE_CHUNKS * self.p_chunk_size
        return self.firehose_threshold
