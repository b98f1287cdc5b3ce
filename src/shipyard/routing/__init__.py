"""Which engine serves a request. Knows engines and deployments, never HTTP."""
