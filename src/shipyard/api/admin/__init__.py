"""The /admin routes, one module per resource: accounts (tenants, keys, usage), alerts and SLAs,
the caches, deployments and replicas, experiments, monitoring and scores, the review queue, the
retraining triggers."""
