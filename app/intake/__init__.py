"""How work enters and leaves: webhook deliveries, and the transactional outbox."""
