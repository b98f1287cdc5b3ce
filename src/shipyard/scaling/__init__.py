"""Autoscaling: the policy core, the simulator, and the runtimes that actuate it (docs/scaling.md)."""
