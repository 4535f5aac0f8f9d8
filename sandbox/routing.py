"""WebSocket routes of the lab runtime."""

from django.urls import path

from .consumers import LabConsumer
from .terminals import TerminalConsumer

websocket_urlpatterns = [
    path("ws/labs/<str:lab_id>/", LabConsumer.as_asgi()),
    path("ws/labs/<str:lab_id>/terminals/<str:node>/", TerminalConsumer.as_asgi()),
]
