"""Adapters to the outside world. They parse, verify and send; they decide nothing and never
touch the database (the services pass them what they need)."""
