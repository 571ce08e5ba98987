"""Test settings: the real settings module with a throwaway key and an isolated models dir."""
import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("MODELS_DIR", os.path.join(tempfile.gettempdir(), "n3-test-models"))

from n3site.settings import *  # noqa: E402,F401,F403

# Django's testing advice: a fast password hasher. The default (PBKDF2, 1,000,000 iterations) costs about 0.3 s per
# user made or logged in, most of the fast loop's set-up time. Test sites in their own processes (tests/sites.py)
# keep the real settings.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
