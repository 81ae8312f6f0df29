"""The deployments every migration in sql/ implies: deploy.py (to the work pool), serve.py (without)."""
