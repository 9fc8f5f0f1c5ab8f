"""Infrastructure below every domain: the outbox that dispatches tasks, effect keys, dead letters."""
