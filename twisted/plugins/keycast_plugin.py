"""twistd plugin: ``twistd -n keycast`` runs the signer daemon (see keycast_tw.tap)."""

from twisted.application.service import ServiceMaker

keycast = ServiceMaker(  # type: ignore[no-untyped-call]
    "keycast", "keycast_tw.tap", "NIP-46 remote signer (bunker) for Nostr", "keycast"
)
