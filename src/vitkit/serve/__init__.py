"""``vitkit serve``: a model behind a JSON API with dynamic batching, and a page that explains each
answer (FastAPI + uvicorn)."""

from .app import API_VERSION, ServeSettings, batcher_for, create_app, serve, served_name
from .batching import DynamicBatcher

__all__ = ["API_VERSION", "DynamicBatcher", "ServeSettings", "batcher_for", "create_app", "serve", "served_name"]
