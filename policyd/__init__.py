"""mosquitto-policyd: topic ACLs for Mosquitto, decided by a policy daemon."""

__version__ = "0.1.0"
