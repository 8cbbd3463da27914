"""keycast_tw.signer."""
