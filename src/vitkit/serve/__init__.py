"""``vitkit serve``: a model behind a JSON API with dynamic batching, and a page that explains each
answer (FastAPI + uvicorn)."""

from .app import API_VERSION, ServeSettings, create_app
from .batching import DynamicBatcher

__all__ = ["API_VERSION", "DynamicBatcher", "ServeSettings", "create_app"]
