"""Stacklab settings: every value comes from the environment, with a default that works for a
newcomer (SQLite, a Redis that `make run` starts on a socket under .run/, the local Docker engine).
Production differences are environment values, not a second settings file."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent
RUN_DIR = Path(os.environ.get("STACKLAB_RUN_DIR", BASE_DIR / ".run"))


def env_bool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None:
        return default
    return value.strip().lower() in {"1", "true", "yes", "on"}


def env_int_or_none(name: str, default: int | None) -> int | None:
    """A whole number from the environment; set but empty means none (no limit)."""
    value = os.environ.get(name)
    if value is None:
        return default
    if not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise RuntimeError(f"{name} must be a whole number or empty, not {value!r}") from None


def env_list(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG", True)
SECRET_KEY = os.environ.get("SECRET_KEY", "")
if not SECRET_KEY:
    if not DEBUG:
        raise RuntimeError("SECRET_KEY must be set when DEBUG is off")
    SECRET_KEY = "dev-only-insecure-key-set-SECRET_KEY-in-production"
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost,testserver")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "daphne",
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "django_ratelimit",
    "course",
    "sandbox",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "stacklab.urls"
ASGI_APPLICATION = "stacklab.asgi.application"

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

# SQLite for a newcomer; PostgreSQL in production and CI through DATABASE_URL.
DATABASE_URL = os.environ.get("DATABASE_URL", f"sqlite:///{RUN_DIR / 'stacklab.sqlite3'}")
DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=0)}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The newcomer's database lives in the run directory: make it, so `migrate` works first time.
    Path(DATABASES["default"]["NAME"]).parent.mkdir(parents=True, exist_ok=True)
    # The web server, the worker and the watcher all write: wait for the lock instead of failing,
    # and take it up front so a read-then-write transaction cannot deadlock.
    DATABASES["default"]["OPTIONS"] = {"timeout": 20, "transaction_mode": "IMMEDIATE"}
    # Tests run threads (the monitor, racing launches) against the database: a file behaves like
    # production SQLite, where an in-memory shared cache would fail with table locks instead.
    # One file per test run (by process id), so two runs side by side never share it.
    DATABASES["default"]["TEST"] = {"NAME": str(RUN_DIR / f"test-stacklab-{os.getpid()}.sqlite3")}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Redis carries the Celery broker and the channel layer. Unset, it is the private Redis that
# `make run` starts on a Unix socket, so nothing clashes with a Redis already on the machine.
REDIS_URL = os.environ.get("REDIS_URL", f"unix://{RUN_DIR / 'redis.sock'}")
IS_PRIVATE_REDIS = "REDIS_URL" not in os.environ


def celery_broker_url(redis_url: str) -> str:
    """Celery spells a Redis Unix socket `redis+socket://`, redis-py spells it `unix://`."""
    if redis_url.startswith("unix://"):
        return "redis+socket://" + redis_url.removeprefix("unix://")
    return redis_url


# A socket waits for its next message with a blocking BZPOPMIN of up to 5 s (channels-redis's
# `RedisChannelLayer.brpop_timeout`). redis-py 8 gives every connection, `redis://` and `unix://`
# alike, a 5 s read timeout by default (`redis._defaults.DEFAULT_SOCKET_TIMEOUT`), so a socket
# quiet for 5 s raced its own read timeout, lost, and was closed with 1011. Reads get this much
# longer than the longest block; it still bounds a read from a Redis that stopped answering.
# A `socket_timeout` in the URL's query wins.
CHANNEL_LAYER_READ_TIMEOUT = 15.0


def channel_layers(redis_url: str, prefix: str) -> dict[str, Any]:
    """The Channels layer on the Redis at `redis_url` (`redis://host:port/db` or `unix://path`)."""
    host = {"address": redis_url, "socket_timeout": CHANNEL_LAYER_READ_TIMEOUT}
    return {
        "default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [host], "prefix": prefix}}
    }


CHANNEL_LAYERS = channel_layers(REDIS_URL, os.environ.get("CHANNEL_PREFIX", "stacklab"))

# The watcher keeps each lab's last minutes of traffic figures here, so a reloaded page redraws
# its charts; shared by the processes through Redis.
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}}
# Lab launches a user may request, in django-ratelimit's notation ("10/m", "100/h"), counted in
# the cache above (shared by every web process).
LAUNCH_RATE_LIMIT = os.environ.get("STACKLAB_LAUNCH_RATE", "10/m")
# Labs running at once: in all (the engine's capacity), and per learner outside any cohort (cohorts
# set their own quotas). Empty: no limit.
MAX_LABS_RUNNING = env_int_or_none("STACKLAB_MAX_LABS_RUNNING", 40)
MAX_LABS_PER_LEARNER = env_int_or_none("STACKLAB_MAX_LABS_PER_LEARNER", 2)
# django-ratelimit lists Django's own Redis cache as "not officially supported": it is shared
# and its incr is atomic (INCR), which is all the counter needs.
SILENCED_SYSTEM_CHECKS = ["django_ratelimit.W001"]

CELERY_BROKER_URL = os.environ.get("CELERY_BROKER_URL", celery_broker_url(REDIS_URL))
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Unacked tasks come back after this long. Labs do not wait for it (a lost provision is found
# by its lapsed lease or by the provision sweep, see sweep-provisions); it stays longer than any
# task runs, so a task still at work is never handed to a second worker as well.
CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": 900}
CELERY_BEAT_SCHEDULE_FILENAME = str(RUN_DIR / "celerybeat-schedule")
CELERY_BEAT_SCHEDULE = {
    "reap-labs": {"task": "sandbox.tasks.reap_labs", "schedule": 30.0},
    # Often, so a lab whose provisioning died or whose task was lost is over within a minute.
    "sweep-provisions": {"task": "sandbox.tasks.sweep_provisions", "schedule": 10.0},
    "reconcile-labs": {"task": "sandbox.tasks.reconcile_labs", "schedule": 60.0},
    # Puts back lab isolation rules that went missing while labs run (sandbox/isolation.py).
    "keep-lab-isolation": {"task": "sandbox.tasks.keep_lab_isolation", "schedule": 60.0},
    "stop-labs-over-hours": {"task": "course.tasks.stop_labs_over_hours", "schedule": 60.0},
}

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "course:index"
LOGOUT_REDIRECT_URL = "login"

# E-mail (password reset, address confirmation): printed on the console for a newcomer; SMTP once
# EMAIL_HOST is set.
# An explicit EMAIL_BACKEND wins either way. Under pytest, Django swaps in its in-memory outbox.
_email_host = os.environ.get("EMAIL_HOST", "")
EMAIL_BACKEND = os.environ.get("EMAIL_BACKEND") or (
    "django.core.mail.backends.smtp.EmailBackend" if _email_host else "django.core.mail.backends.console.EmailBackend"
)
EMAIL_HOST = _email_host or "localhost"
EMAIL_PORT = int(os.environ.get("EMAIL_PORT", "587"))
EMAIL_HOST_USER = os.environ.get("EMAIL_HOST_USER", "")
EMAIL_HOST_PASSWORD = os.environ.get("EMAIL_HOST_PASSWORD", "")
# Implicit TLS (EMAIL_USE_SSL, usually port 465) and STARTTLS exclude each other: SSL turns the
# STARTTLS default off.
EMAIL_USE_SSL = env_bool("EMAIL_USE_SSL", False)
EMAIL_USE_TLS = env_bool("EMAIL_USE_TLS", not EMAIL_USE_SSL)
if EMAIL_USE_SSL and EMAIL_USE_TLS:
    raise RuntimeError("EMAIL_USE_TLS and EMAIL_USE_SSL exclude each other: set only one")
EMAIL_TIMEOUT = int(os.environ.get("EMAIL_TIMEOUT", "10"))
DEFAULT_FROM_EMAIL = os.environ.get("DEFAULT_FROM_EMAIL", "Stacklab <noreply@localhost>")
# Days a link that verifies an e-mail address works (only invites limited to e-mail domains ask
# for a verified address).
EMAIL_VERIFICATION_DAYS = int(os.environ.get("STACKLAB_EMAIL_VERIFICATION_DAYS", "3"))

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
# Browser libraries come from npm (package-lock.json, `make` runs `npm ci`) and are served from
# their dist folders in node_modules: no CDN, no copied files.
STATICFILES_DIRS = [
    BASE_DIR / "static",
    ("vendor/xterm", BASE_DIR / "node_modules/@xterm/xterm/lib"),
    ("vendor/xterm", BASE_DIR / "node_modules/@xterm/xterm/css"),
    ("vendor/xterm-addon-fit", BASE_DIR / "node_modules/@xterm/addon-fit/lib"),
    ("vendor/uplot", BASE_DIR / "node_modules/uplot/dist"),
    # Lesson diagrams: the ESM build imports its chunks from beside it (chunks/mermaid.esm.min/).
    ("vendor/mermaid", BASE_DIR / "node_modules/mermaid/dist"),
]
STATIC_ROOT = BASE_DIR / "staticfiles"


def client_error_as_one_line(record: logging.LogRecord) -> bool:
    """A request Django answers with a 4xx (a body over DATA_UPLOAD_MAX_MEMORY_SIZE, too many
    fields, a malformed multipart body, a foreign Host, an admin lookup on a field it may not
    filter by) is the client's doing: one warning line with the path, no traceback. Django logs
    these at ERROR with the exception attached. Records without a status code (every other
    log line) and 5xx answers pass unchanged."""
    if getattr(record, "status_code", 500) >= 500:
        return True
    request = getattr(record, "request", None)  # Django's `extra`, with the status code
    if record.name.startswith("django.security.") and request is not None:
        record.msg, record.args = f"{record.getMessage()} ({request.method} {request.path})", ()
    record.exc_info, record.exc_text = None, None
    record.levelno, record.levelname = logging.WARNING, "WARNING"
    return True


LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"client_error_as_one_line": {"()": lambda: client_error_as_one_line}},
    # On the handler, not on loggers one by one: Django logs each refused request to
    # django.security.<the SuspiciousOperation's class>, and the admin alone has several.
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": "plain", "filters": ["client_error_as_one_line"]}
    },
    # Django's default config gives its "django" logger handlers of its own (a console one when
    # DEBUG is on, mail_admins), which would see a refused request before the filter above does:
    # every line goes through the one console instead.
    "loggers": {"django": {"handlers": [], "propagate": True}},
    "root": {"handlers": ["console"], "level": os.environ.get("LOG_LEVEL", "INFO")},
}

# --- Stacklab ---
# Where lab packages and lessons live (content in git).
LABS_DIR = Path(os.environ.get("STACKLAB_LABS_DIR", BASE_DIR / "labs"))
LESSONS_DIR = Path(os.environ.get("STACKLAB_LESSONS_DIR", BASE_DIR / "course" / "lessons"))
# The pages load the content files into the database themselves when one changed, so an edit
# shows on reload; off (production), they show what `manage.py load_content` last loaded.
CONTENT_AUTOLOAD = env_bool("STACKLAB_CONTENT_AUTOLOAD", DEBUG)
# Engine objects carry this label, so two Stacklab installs (or a test run beside `make run`)
# on one Docker engine never reap each other's labs.
STACKLAB_INSTANCE = os.environ.get("STACKLAB_INSTANCE", "default")
# Per-lab /24 networks are carved from this pool, so many labs never exhaust Docker's own pools.
LAB_SUBNET_POOL = os.environ.get("LAB_SUBNET_POOL", "10.213.0.0/16")
# Firewall rules keep that pool (and every lab bridge, sl-<lab>) off the host and off every other
# network (sandbox/isolation.py): the worker installs them at start, checks them before each lab
# (a lab is not started without them) and beat has them put back every minute. Turn off only
# when the engine runs on another host, whose firewall must then do the same.
LAB_ISOLATION = env_bool("STACKLAB_LAB_ISOLATION", True)
LAB_PROVISION_TIMEOUT = int(os.environ.get("LAB_PROVISION_TIMEOUT", "180"))
# A provisioning run renews its lab's lease every third of this (seconds); a lease left to lapse
# means the run died with its worker, and the provision sweep fails the lab and removes it.
LAB_PROVISION_LEASE = int(os.environ.get("LAB_PROVISION_LEASE", "15"))
# A lab still `requested` this long (seconds) has lost its provision task: queued again once,
# then failed (see lifecycle.sweep_provisions).
LAB_REQUEST_GRACE = int(os.environ.get("LAB_REQUEST_GRACE", "15"))
# Demo accounts are created by `manage.py setup_demo` (run by `make run`) unless turned off.
DEMO_PASSWORD = os.environ.get("DEMO_PASSWORD", "stacklab-demo")

WHITENOISE_USE_FINDERS = DEBUG
WHITENOISE_AUTOREFRESH = DEBUG

# Under pytest: labs get their own engine label (the suite reaps only its own objects, never a
# `make run` on the same engine), tasks are called directly rather than sent to a worker, and the
# channel layer keeps its keys apart.
TESTING = "pytest" in sys.modules
if TESTING:
    STACKLAB_INSTANCE = os.environ.get("STACKLAB_TEST_INSTANCE", "test")
    CELERY_BROKER_URL = "memory://"
    CHANNEL_LAYERS["default"]["CONFIG"]["prefix"] = "stacklab-test"
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    # One process per test run: its own memory is the shared cache django-ratelimit asks for.
    SILENCED_SYSTEM_CHECKS = [*SILENCED_SYSTEM_CHECKS, "django_ratelimit.E003"]
