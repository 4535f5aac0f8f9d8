"""ASGI entry point: Django for HTTP, Channels for the lab WebSockets."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "stacklab.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402  (needs Django set up first)
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import re_path  # noqa: E402

from course.routing import websocket_urlpatterns as course_websockets  # noqa: E402
from sandbox.routing import websocket_urlpatterns as lab_websockets  # noqa: E402
from sandbox.sockets import ChannelLayerGuard, refuse_unknown_path  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": ChannelLayerGuard(
            AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter([*lab_websockets, *course_websockets, re_path(r"", refuse_unknown_path)]))
            )
        ),
    }
)
