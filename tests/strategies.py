"""Shared hypothesis strategies for the keycast_tw.nostr tests, and the hypothesis profiles.

Importing this module registers the "ci" profile (no deadline: CI machines are shared and slow;
derandomized: a CI run must be reproducible) and loads it when CI=true.
"""

from __future__ import annotations

import os
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st

settings.register_profile("ci", deadline=None, derandomize=True)
settings.register_profile("dev", deadline=None)
settings.load_profile("ci" if os.environ.get("CI") == "true" else "dev")

CURVE_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141

# 32-byte secret keys that are valid scalars in [1, n-1], including the extremes.
private_keys = st.integers(min_value=1, max_value=CURVE_ORDER - 1).map(
    lambda n: n.to_bytes(32, "big")
)

# Any text that UTF-8 can encode (no lone surrogates), as event fields and plaintexts are.
texts = st.text(alphabet=st.characters(codec="utf-8"))
nonempty_texts = st.text(alphabet=st.characters(codec="utf-8"), min_size=1)

tags = st.lists(st.lists(texts, max_size=4), max_size=4)

# Anything orjson.loads could return: what a hostile relay or client can send us.
json_values: st.SearchStrategy[Any] = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=12,
)

relay_urls = st.builds(
    lambda scheme, host, port, path: f"{scheme}://{host}{port}{path}",
    st.sampled_from(["ws", "wss"]),
    st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?(\.[a-z]{2,6}){1,2}", fullmatch=True),
    st.sampled_from(["", ":443", ":7777"]),
    st.sampled_from(["", "/", "/nostr", "/a/b?x=1&y=2", "/~user/path%20x"]),
)
