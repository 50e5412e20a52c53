"""The Ray Serve application: FastAPI ingress, deployments, schemas, auth, uploads, packaging, Prometheus."""
