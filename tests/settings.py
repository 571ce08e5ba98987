"""Test settings: the real settings module with a throwaway key and an isolated models dir."""
import os
import tempfile

os.environ.setdefault("SECRET_KEY", "test-secret-key")
os.environ.setdefault("MODELS_DIR", os.path.join(tempfile.gettempdir(), "n3-test-models"))

from n3_server.rlhf.threads import torch_threads  # noqa: E402
from n3site.settings import *  # noqa: E402,F401,F403

# The suite's own torch (models trained in this process) takes its share of the cores, not all of them: its training
# and inference child processes take theirs (N3_TRAINING_THREADS, N3_INFERENCE_THREADS). Read when torch loads.
os.environ.setdefault("OMP_NUM_THREADS", str(torch_threads("tests")))

# Pages link static files under their plain names, whatever a `collectstatic` left in STATIC_ROOT: the tests read
# the HTML, and the deployment's hashed names are tested on a real web process (tests/browser/test_procfile_browser.py).
STORAGES = {**STORAGES, "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}}  # noqa: F405

# Django's testing advice: a fast password hasher. The default (PBKDF2, 1,000,000 iterations) costs about 0.3 s per
# user made or logged in, most of the fast loop's set-up time. Test sites in their own processes (tests/sites.py)
# keep the real settings.
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
