"""Static files as WhiteNoise serves them from the app itself (no proxy, no CDN): ``collectstatic`` writes each file
compressed (gzip, Brotli when installed) under a name with its hash, and pages link those names, cached for a year.

A process whose ``collectstatic`` has not run (a test site, a gunicorn started by hand without it) still works:
``{% static %}`` falls back to the plain name, which WhiteNoise serves from the apps' own static directories
(WHITENOISE_USE_FINDERS), uncompressed and revalidated instead of cached forever."""
from whitenoise.storage import CompressedManifestStaticFilesStorage


class StaticFilesStorage(CompressedManifestStaticFilesStorage):
    def stored_name(self, name: str) -> str:
        try:
            return super().stored_name(name)
        except ValueError:  # no manifest (collectstatic not run), or a file added since it ran
            return name
