"""The composition root and the process runtimes: the app assembled from shipyard.yaml, uvicorn,
several processes on one socket, the Ray replica, and the Kubernetes manifests of a config."""
