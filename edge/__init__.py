"""orbit-edge: onboard inference runtime for small ARM flight computers."""

__version__ = "0.1.0"
