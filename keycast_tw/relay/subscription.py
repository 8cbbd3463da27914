"""What we ask each relay for: kind-24133 requests to our bunkers, and from when.

Pure functions; the per-relay state machine applies them on every (re)connect and whenever the
set of bunker pubkeys changes.
"""

from __future__ import annotations

from typing import Any

KIND_NIP46 = 24133

#: Subscription ids are scoped per connection; a fixed prefix makes ours recognisable in relay
#: logs and keeps every id far below the NIP-01 limit of 64 characters.
FIREHOSE_ID = "keycast-all"
CHUNK_ID_PREFIX = "keycast-p"

Filter = dict[str, Any]


def plan_filters(
    pubkeys: frozenset[str], *, chunk_size: int, firehose_threshold: int
) -> dict[str, Filter]:
    """Map subscription id -> filter (without ``since``) for a set of bunker pubkeys.

    Up to ``firehose_threshold`` pubkeys are split, sorted, into ``#p`` chunks of at most
    ``chunk_size`` so that no REQ exceeds relay limits on filter size; above it one
    ``{"kinds":[24133]}`` firehose is cheaper for the relay than dozens of chunks, and the
    engine drops requests for pubkeys it does not manage. Chunk ids are stable by position,
    so a REQ with the same id replaces the previous chunk on the relay.
    """
    if not pubkeys:
        return {}
    if len(pubkeys) > firehose_threshold:
        return {FIREHOSE_ID: {"kinds": [KIND_NIP46]}}
    ordered = sorted(pubkeys)
    return {
        f"{CHUNK_ID_PREFIX}{index}": {
            "kinds": [KIND_NIP46],
            "#p": ordered[start : start + chunk_size],
        }
        for index, start in enumerate(range(0, len(ordered), chunk_size))
    }


def resume_since(resume_at: float, now: float, *, skew: float, max_lookback: float) -> int:
    """``since`` for a (re)subscription that must not miss what arrived after ``resume_at``.

    ``resume_at`` is the last moment we know the previous connection was delivering (the last
    frame or pong), or the start time. ``skew`` absorbs clients whose clocks run behind ours;
    ``max_lookback`` caps the replay from relays that store ephemeral events, because the
    engine discards requests older than its freshness window anyway. Overlap is harmless: the
    pool and the engine drop duplicates.
    """
    since = min(resume_at, now) - skew
    return max(0, int(max(since, now - max_lookback)))


def with_since(flt: Filter, since: int) -> Filter:
    return {**flt, "since": since}
