"""Ticketing systems: one module per vendor for inbound webhooks, and outbound status comments."""
