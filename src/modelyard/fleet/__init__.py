"""Beside the request path: model artifacts and worker-process supervision."""
