"""What the server observes about itself: metrics and per-request logs."""
