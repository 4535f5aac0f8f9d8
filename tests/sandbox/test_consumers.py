"""The lab WebSocket through the real ASGI application: owner and instructors are let in and get
a snapshot, everyone else is refused, bad messages get an error frame and the socket stays up."""

from __future__ import annotations

from datetime import timedelta

import pytest
from channels.db import database_sync_to_async
from channels.layers import get_channel_layer
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth.models import User
from django.test import Client
from django.utils import timezone

from sandbox import lifecycle
from sandbox.live import lab_group, publish
from sandbox.models import Lab
from stacklab.asgi import application
from tests.conftest import teach_cohort

pytestmark = pytest.mark.django_db(transaction=True)


def headers_for(user: User | None) -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", b"http://testserver")]
    if user is not None:
        client = Client()
        client.force_login(user)
        cookie = f"{settings.SESSION_COOKIE_NAME}={client.cookies[settings.SESSION_COOKIE_NAME].value}"
        headers.append((b"cookie", cookie.encode()))
    return headers


@database_sync_to_async
def setup_lab(username: str = "learner") -> tuple[User, Lab]:
    user = User.objects.create_user(username=username, password="pw")
    lab, _ = lifecycle.request_lab(user, "scaling-load-balancer", "load-balancing")
    return user, lab


async def connect(user: User | None, lab: Lab) -> tuple[WebsocketCommunicator, bool, int | None]:
    headers = await database_sync_to_async(headers_for)(user)
    communicator = WebsocketCommunicator(application, f"/ws/labs/{lab.id}/", headers=headers)
    connected, code = await communicator.connect()
    return communicator, connected, code


async def test_owner_gets_a_snapshot_then_live_messages() -> None:
    user, lab = await setup_lab()
    communicator, connected, _ = await connect(user, lab)
    try:
        assert connected
        snapshot = await communicator.receive_json_from()
        assert snapshot["type"] == "snapshot"
        assert snapshot["lab"]["id"] == str(lab.id)
        assert snapshot["lab"]["state"] == "requested"
        await get_channel_layer().group_send(
            lab_group(str(lab.id)),
            {"type": "lab.message", "message": {"type": "node", "name": "app-2", "state": "down"}},
        )
        assert await communicator.receive_json_from() == {"type": "node", "name": "app-2", "state": "down"}
    finally:
        await communicator.disconnect()


async def test_another_learner_is_refused() -> None:
    _, lab = await setup_lab()
    stranger = await database_sync_to_async(User.objects.create_user)(username="mallory", password="pw")
    communicator, connected, code = await connect(stranger, lab)
    assert not connected
    assert code == 4404
    await communicator.disconnect()


async def test_malformed_lab_id_is_refused() -> None:
    user, _ = await setup_lab()
    communicator = WebsocketCommunicator(
        application, "/ws/labs/not-a-uuid/", headers=await database_sync_to_async(headers_for)(user)
    )
    connected, code = await communicator.connect()
    assert not connected
    assert code == 4404
    await communicator.disconnect()


async def test_published_messages_reach_the_owner_and_snapshot_is_resent_on_request() -> None:
    user, lab = await setup_lab()
    communicator, _, _ = await connect(user, lab)
    try:
        await communicator.receive_json_from()  # snapshot
        await database_sync_to_async(publish)(str(lab.id), {"type": "step", "message": "Started db"})
        assert await communicator.receive_json_from() == {"type": "step", "message": "Started db"}
        await communicator.send_json_to({"type": "snapshot"})
        again = await communicator.receive_json_from()
        assert again["type"] == "snapshot" and again["lab"]["id"] == str(lab.id)
    finally:
        await communicator.disconnect()


async def test_owner_activity_on_the_page_keeps_the_lab_alive() -> None:
    user, lab = await setup_lab()
    long_ago = timezone.now() - timedelta(minutes=20)
    await database_sync_to_async(Lab.objects.filter(pk=lab.pk).update)(state=Lab.State.READY, last_active_at=long_ago)
    communicator, _, _ = await connect(user, lab)
    try:
        await communicator.receive_json_from()  # snapshot
        await communicator.send_json_to({"type": "active"})
        update = await communicator.receive_json_from()
        assert update["type"] == "lab" and update["idle_seconds_left"] > 29 * 60
    finally:
        await communicator.disconnect()


async def test_anonymous_is_refused() -> None:
    _, lab = await setup_lab()
    communicator, connected, code = await connect(None, lab)
    assert not connected
    assert code == 4401
    await communicator.disconnect()


async def test_instructor_may_watch() -> None:
    _, lab = await setup_lab()

    @database_sync_to_async
    def make_instructor() -> User:
        from django.contrib.auth.models import Group

        user = User.objects.create_user(username="teacher", password="pw")
        user.groups.add(Group.objects.get_or_create(name="instructors")[0])
        teach_cohort(user, [lab.owner_id])
        return user

    communicator, connected, _ = await connect(await make_instructor(), lab)
    try:
        assert connected
        assert (await communicator.receive_json_from())["type"] == "snapshot"
    finally:
        await communicator.disconnect()


async def test_malformed_messages_get_an_error_and_the_socket_stays_up() -> None:
    user, lab = await setup_lab()
    communicator, _, _ = await connect(user, lab)
    try:
        await communicator.receive_json_from()  # snapshot
        await communicator.send_to(text_data="{not json")
        assert await communicator.receive_json_from() == {"type": "error", "message": "Messages must be JSON objects."}
        await communicator.send_json_to([1, 2])
        assert (await communicator.receive_json_from())["type"] == "error"
        await communicator.send_json_to({"type": "launch-missiles"})
        assert await communicator.receive_json_from() == {
            "type": "error",
            "message": "Unknown message type 'launch-missiles'.",
        }
        await communicator.send_to(text_data="[" * 100_000)
        assert (await communicator.receive_json_from())["type"] == "error"
        await communicator.send_json_to({"type": "ping"})
        assert await communicator.receive_json_from() == {"type": "pong"}
    finally:
        await communicator.disconnect()


async def test_foreign_origin_is_refused() -> None:
    user, lab = await setup_lab()
    headers = [h for h in await database_sync_to_async(headers_for)(user) if h[0] != b"origin"]
    communicator = WebsocketCommunicator(
        application, f"/ws/labs/{lab.id}/", headers=[*headers, (b"origin", b"http://evil.example")]
    )
    connected, _ = await communicator.connect()
    assert not connected
    await communicator.disconnect()


async def test_an_instructor_of_another_cohort_is_refused() -> None:
    _, lab = await setup_lab()

    @database_sync_to_async
    def other_cohorts_instructor() -> User:
        from django.contrib.auth.models import Group

        user = User.objects.create_user(username="other-teacher", password="pw")
        user.groups.add(Group.objects.get_or_create(name="instructors")[0])
        teach_cohort(user, [User.objects.create_user(username="their-learner", password="pw")])
        return user

    communicator, connected, code = await connect(await other_cohorts_instructor(), lab)
    assert (connected, code) == (False, 4404)
    await communicator.disconnect()


async def test_a_foreign_origin_is_refused_on_every_socket() -> None:
    user, lab = await setup_lab()
    headers = [(name, value) for name, value in await database_sync_to_async(headers_for)(user) if name != b"origin"]
    headers.append((b"origin", b"https://evil.example"))
    for path in (f"/ws/labs/{lab.id}/", "/ws/cohorts/1/", f"/ws/labs/{lab.id}/terminals/lb/"):
        communicator = WebsocketCommunicator(application, path, headers=headers)
        connected, _ = await communicator.connect()
        assert not connected, path
        await communicator.disconnect()
