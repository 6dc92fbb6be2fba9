"""Mail mailbot sends: rendered from templates, composed, queued in the outbox."""
