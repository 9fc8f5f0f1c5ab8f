"""Tenants, their agents (support staff) and the agents' API tokens."""
