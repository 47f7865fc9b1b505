"""Serving compiled files: the Open Inference Protocol (KServe v2) over HTTP with a batcher that
knows the file's buckets, Prometheus metrics, and scale-out on Ray Serve (ray.py)."""
from .app import Server, create_app, run
from .repository import load_models
from .servable import Servable, servable

__all__ = ["Server", "Servable", "create_app", "load_models", "run", "servable"]
