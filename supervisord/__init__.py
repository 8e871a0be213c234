"""qbcallbacks: a standalone supervisor daemon for Qube! universal callbacks."""

__version__ = "0.1.0"
