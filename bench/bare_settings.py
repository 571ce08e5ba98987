"""n3's settings with the URLs of bench/bare_urls.py: the baseline of bench/ingest_bench.py, not part of the product.

    DJANGO_SETTINGS_MODULE=bench.bare_settings gunicorn -c n3site/gunicorn.conf.py n3site.serve:application

Everything else (middleware, database, DB_CONN_MAX_AGE, N3_TOKEN_CACHE_SECONDS) is n3site/settings.py's, so the
bare view runs under the same gunicorn config, the same n3site/serve.py wrapper and the same Django as the API.
"""
from n3site.settings import *  # noqa: F401,F403

ROOT_URLCONF = "bench.bare_urls"
