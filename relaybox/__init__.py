"""relaybox: a self-hosted SMS gateway appliance."""

__version__ = "0.1.0"
