"""Federated sign-in (OpenID Connect): a tenant's identity providers, and the authorization code
flows Rekey runs against them. What Rekey *observed* at the end of a flow (a verified ID token
for an issuer and subject, signed in at `auth_time`) is all this package yields; the recovery
layer above decides what that sign-in proves (app/recovery/federated.py)."""
