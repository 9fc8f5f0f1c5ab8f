"""End users of a tenant: identities, contact channels, factors, backup codes, sessions, sign-in."""
