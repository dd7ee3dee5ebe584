"""Verified model weights: the lock file, the hub listing, pulling into a mirror, verifying."""
