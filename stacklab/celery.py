"""The Celery app: lab provisioning and teardown run here, driven by the web and by beat."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stacklab.settings")

app = Celery("stacklab")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
