"""HR systems: inbound adapters that vouch for a recovery request."""
