"""The audit trail: append-only, one SHA-256 hash chain per tenant, gapless `seq`."""
