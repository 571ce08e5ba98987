"""Test settings: the real settings module with a throwaway key and an isolated models dir."""
import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("MODELS_DIR", os.path.join(tempfile.gettempdir(), "n3-test-models"))

from n3site.settings import *  # noqa: E402,F401,F403
