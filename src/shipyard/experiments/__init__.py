"""Experiments: shadow, canary, A/B and champion-challenger over deployments (docs/experiments.md)."""
