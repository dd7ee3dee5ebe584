"""Private coding assistant toolkit: provision a local-only AI coding stack and prove nothing leaves."""

__version__ = "0.1.0"
