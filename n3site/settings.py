"""n3 settings. Everything an operator may change comes from environment variables.

Defaults give the embedded single-machine setup: SQLite (WAL) + the django-q2 ORM broker.
Scale out by setting DATABASE_URL (PostgreSQL) and REDIS_URL (Redis broker); see README "Operations".
"""
import os
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent


def env_bool(name: str, default: bool = False) -> bool:
    return os.environ.get(name, str(default)).strip().lower() in {"1", "true", "yes", "on"}


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


DEBUG = env_bool("DEBUG", False)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise ImproperlyConfigured("SECRET_KEY must be set when DEBUG is off (set DEBUG=1 for local development).")
    SECRET_KEY = "insecure-development-key-do-not-use-in-production"

ALLOWED_HOSTS = [
    h.strip() for h in os.environ.get("ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]").split(",") if h.strip()
]
CSRF_TRUSTED_ORIGINS = [o.strip() for o in os.environ.get("CSRF_TRUSTED_ORIGINS", "").split(",") if o.strip()]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "policies",
    "feedback",
    "training",
    "inference",  # for manage.py serve_policies; the web process never imports its modules
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",  # static files (admin, review queue, API docs): n3site/storage.py
    "n3site.middleware.DatabaseUnavailableMiddleware",  # a page whose database is away: 503, not 500
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "n3site.middleware.LazyMessageMiddleware",  # Django's, with the storage made on first use (API: never)
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "n3site.urls"
WSGI_APPLICATION = "n3site.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------------------
# SQLite by default. WAL lets readers run beside the one writer; IMMEDIATE takes the write lock
# at BEGIN, so two writers queue on the busy timeout instead of failing with "database is locked"
# when a deferred transaction tries to upgrade its read lock.
VAR_DIR = Path(os.environ.get("N3_VAR_DIR", BASE_DIR / "var"))
DATABASES = {
    "default": dj_database_url.config(
        env="DATABASE_URL",
        default=f"sqlite:///{VAR_DIR / 'n3.sqlite3'}",
        conn_max_age=env_int("DB_CONN_MAX_AGE", 0),
        # A kept connection (DB_CONN_MAX_AGE > 0, as n3site/gunicorn.conf.py sets) is checked before a request
        # reuses it.
        conn_health_checks=True,
    )
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 20,
    }
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = os.environ.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = Path(os.environ.get("STATIC_ROOT", BASE_DIR / "staticfiles"))
STATICFILES_DIRS = [BASE_DIR / "static"] if (BASE_DIR / "static").is_dir() else []
# Served by the web process itself (WhiteNoise). Without DEBUG, from what `collectstatic` wrote: compressed, under
# hashed names cached for a year (the Procfile's web line collects before gunicorn starts); a file not collected
# is still served from the apps' static directories, under its plain name (n3site/storage.py).
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage" if DEBUG
                    else "n3site.storage.StaticFilesStorage"},
}
WHITENOISE_USE_FINDERS = True
LOGIN_URL = "admin:login"

# Bodies above this are refused (the API answers 413) before they are parsed (bulk feedback included).
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("N3_MAX_BODY_BYTES", 10 * 1024 * 1024)
DATA_UPLOAD_MAX_NUMBER_FIELDS = 10_000

if not DEBUG:
    SESSION_COOKIE_HTTPONLY = True
    CSRF_COOKIE_HTTPONLY = False  # the admin's JS reads it for XHR posts
    SECURE_CONTENT_TYPE_NOSNIFF = True
    X_FRAME_OPTIONS = "DENY"

# --- REST API -------------------------------------------------------------------------------
REST_FRAMEWORK = {
    # Token first: an anonymous request then gets 401 with "WWW-Authenticate: Token" (not 403).
    # Session auth serves the admin's own pages and the Swagger UI; DRF enforces CSRF for it.
    # DRF's TokenAuthentication with the token's user cached per process (N3_TOKEN_CACHE_SECONDS).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["api.permissions.N3ModelPermissions"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_PARSER_CLASSES": ["rest_framework.parsers.JSONParser"],
    "DEFAULT_CONTENT_NEGOTIATION_CLASS": "api.negotiation.N3ContentNegotiation",  # DRF's, with a short way
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "n3site.exceptions.exception_handler",
    "UNAUTHENTICATED_USER": "django.contrib.auth.models.AnonymousUser",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "n3 API",
    "DESCRIPTION": (
        "Human feedback in, better policy models out (RLHF with PPO). "
        "Authenticate with `Authorization: Token <key>` (tokens are made in the admin or with "
        "`manage.py drf_create_token <user>`). Errors are `{\"detail\": \"...\"}` with a 4xx status."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # Swagger UI from our own static files (drf-spectacular-sidecar), not a CDN: works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    # Separate request and response components, so read-only fields (id, createdAt) are not asked for.
    "COMPONENT_SPLIT_REQUEST": True,
    # Each URL also answers with a trailing slash; the schema lists the spec's form only.
    "PREPROCESSING_HOOKS": ["api.urls.without_trailing_slash_aliases"],
    "ENUM_NAME_OVERRIDES": {"PolicyVersionStatusEnum": "policies.models.PolicyVersion.Status"},
}

# --- n3 -------------------------------------------------------------------------------------
MODELS_DIR = Path(os.environ.get("MODELS_DIR", BASE_DIR / "models")).resolve()
N3_PUBLIC_READ = env_bool("N3_PUBLIC_READ", False)
# How long the API may reuse a user's permission set (seconds; 0: ask the database on every request).
N3_PERMISSION_CACHE_SECONDS = env_int("N3_PERMISSION_CACHE_SECONDS", 10)
# How long a process may reuse an API token's user (seconds; 0: read the token and its user on every request). A
# deleted token or deactivated user takes effect at once in the process that changed it, elsewhere within this time.
N3_TOKEN_CACHE_SECONDS = env_int("N3_TOKEN_CACHE_SECONDS", 10)
# How long a process may reuse an agent's row when recording feedback (seconds; 0: look it up on every request).
N3_AGENT_CACHE_SECONDS = env_int("N3_AGENT_CACHE_SECONDS", 10)
# Directories besides MODELS_DIR from which an API request may name a local base model
# (os.pathsep-separated). Any other path is refused, so a client cannot point training at ../../etc.
N3_ALLOWED_MODEL_DIRS = [Path(p).resolve() for p in os.environ.get("N3_ALLOWED_MODEL_DIRS", "").split(os.pathsep) if p]
# Base model used when a request names none. "n3-tiny" is built locally and works offline;
# set N3_DEFAULT_BASE_MODEL=gpt2 (or a local path) on machines that have those weights.
N3_DEFAULT_BASE_MODEL = os.environ.get("N3_DEFAULT_BASE_MODEL", "n3-tiny")
# A dry run reads at most this many of an agent's scored records (an even sample; counts and score statistics stay
# exact), so its time does not grow with the agent's feedback.
N3_ESTIMATE_SAMPLE = env_int("N3_ESTIMATE_SAMPLE", 20_000)
# Longest a training job may run, in seconds; django-q2's timeout and retry derive from it.
N3_TRAINING_TIMEOUT = env_int("N3_TRAINING_TIMEOUT", 6 * 3600)
# A running version whose heartbeat is older than this is declared dead and marked failed.
N3_HEARTBEAT_TIMEOUT = env_int("N3_HEARTBEAT_TIMEOUT", 60)
# A running version whose training process reported no progress (a step, a reward-model batch, a phase) for this
# long is hung (SIGSTOP, a deadlock, a stuck device): its job stops the process and fails the version. Longer than
# the slowest silent stretch: loading or saving a large model, evaluating on the held-out prompts.
N3_STALL_TIMEOUT = env_int("N3_STALL_TIMEOUT", 600)
# Seconds between two sweeps of a worker for versions whose process died (each worker sweeps in a thread).
N3_SWEEP_INTERVAL = float(os.environ.get("N3_SWEEP_INTERVAL", 60))
# Minimum seconds between two metric writes of a running job (heartbeat and history).
N3_METRICS_INTERVAL = float(os.environ.get("N3_METRICS_INTERVAL", 2.0))
# Seconds a running job has to stop by itself after a cancel before its training process is terminated.
N3_CANCEL_GRACE = float(os.environ.get("N3_CANCEL_GRACE", 60))
# What runs a job's training process: a command that runs a Python script with its arguments (shell syntax).
# Empty: this Python. For several GPUs: N3_TRAINING_LAUNCHER="accelerate launch --num_processes 2" (or torchrun
# --nproc_per_node 2): data-parallel PPO, one process per GPU, batch_size rollouts per process and step, bf16 on
# GPUs as with one; rank 0 alone writes the version and the database. No model sharding (each GPU holds the whole
# model); TRL's RLOO/GRPO parallelise themselves. Details: n3_server/rlhf/distributed.py.
N3_TRAINING_LAUNCHER = os.environ.get("N3_TRAINING_LAUNCHER", "")

# --- Inference process (manage.py serve_policies; README "Inference") -----------------------------------------------
N3_SERVE_BIND = os.environ.get("N3_SERVE_BIND", "127.0.0.1:8001")
# Versions kept loaded (least recently used evicted first).
N3_SERVE_MAX_MODELS = env_int("N3_SERVE_MAX_MODELS", 2)
# Requests waiting for a generate in the process; one more is answered 503 with Retry-After.
N3_SERVE_MAX_QUEUE = env_int("N3_SERVE_MAX_QUEUE", 64)
# Most requests of one version in one generate(); how long (ms) a batch may wait to be as large as the previous one
# (concurrent clients stay in step; a lone client never waits).
N3_SERVE_MAX_BATCH = env_int("N3_SERVE_MAX_BATCH", 16)
N3_SERVE_BATCH_WAIT_MS = float(os.environ.get("N3_SERVE_BATCH_WAIT_MS", 20))
# Most tokens a completion may ask for (max_tokens), and a chat completion's default.
N3_SERVE_MAX_TOKENS = env_int("N3_SERVE_MAX_TOKENS", 256)
# "auto": cuda when torch sees a GPU (CUDA_VISIBLE_DEVICES picks it), else cpu; or "cpu", "cuda:1", ...
N3_SERVE_DEVICE = os.environ.get("N3_SERVE_DEVICE", "auto")

# --- Jobs (django-q2) -----------------------------------------------------------------------
# retry > timeout > longest training: django-q2 re-delivers a task that outlives `retry`, and a
# training must never run twice (max_attempts=1; the task also claims its version atomically).
Q_CLUSTER = {
    "name": "n3",
    "workers": env_int("N3_Q_WORKERS", 1),
    "timeout": N3_TRAINING_TIMEOUT + 300,
    "retry": N3_TRAINING_TIMEOUT + 600,
    "max_attempts": 1,
    "ack_failures": True,
    "catch_up": False,
    "save_limit": 500,
    "label": "Jobs",
    "sync": env_bool("N3_Q_SYNC", False),
    "poll": float(os.environ.get("N3_Q_POLL", 1.0)),
}
if os.environ.get("REDIS_URL"):
    # django-q2 passes a string to redis.from_url ("redis://[:password@]host:6379/0", "rediss://..." for TLS).
    Q_CLUSTER["redis"] = os.environ["REDIS_URL"]
else:
    Q_CLUSTER["orm"] = "default"

LOG_LEVEL = os.environ.get("LOG_LEVEL", "INFO").upper()
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    "loggers": {"django": {"level": os.environ.get("DJANGO_LOG_LEVEL", "INFO" if LOG_LEVEL == "DEBUG" else LOG_LEVEL)}},
}
