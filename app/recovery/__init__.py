"""Recovery cases: intake, risk screen, out-of-band verification, and the runbook's actions."""
