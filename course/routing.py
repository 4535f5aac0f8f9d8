"""WebSocket routes of the course: an instructor's cohort dashboard."""

from django.urls import path

from .consumers import DashboardConsumer

websocket_urlpatterns = [
    path("ws/cohorts/<str:cohort_id>/", DashboardConsumer.as_asgi()),
]
