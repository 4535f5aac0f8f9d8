"""Lab isolation on the real engine: with the platform's firewall rules in place, a node reaches
neither a service the host binds on all interfaces (through its gateway or any other host
address) nor another lab, while the nodes of one lab still talk to each other; a node with
NET_RAW that forges its source address reaches the host no better, nor one that writes raw
Ethernet frames carrying IPv6 to its bridge (the host has a link-local address on every
bridge). Opening only this test's own listener to only this test's lab lets the same traffic
through (the probes do reach the host when nothing drops them). A rule deleted by hand is
reported and put back without duplicates, shown on a throwaway pool's rules, so the host's own
rules never leave a hole while we look."""

from __future__ import annotations

import ipaddress
import json
import shlex
import socket
import subprocess
import threading
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from django.conf import settings

from sandbox import isolation
from sandbox.engine import Engine, Health, Network, NodeRun
from sandbox.specs import load_lab

pytestmark = pytest.mark.docker

LAB = "scaling-load-balancer"
APP_PORT = 8080
# Fetches each URL once from inside a node; prints {url: status code, or the error's name}.
# A dropped packet shows as a 1 s timeout, so the whole probe stays short.
PROBE = """
import json, sys, urllib.request
seen = {}
for url in sys.argv[1:]:
    try:
        seen[url] = urllib.request.urlopen(url, timeout=1).status
    except Exception as exc:
        seen[url] = type(exc).__name__
print(json.dumps(seen))
"""


class Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"host service\n")

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - http.server's name
        pass


@pytest.fixture
def host_port() -> Iterator[int]:
    """An HTTP service on the host bound to every interface (0.0.0.0), on a free port."""
    server = ThreadingHTTPServer(("0.0.0.0", 0), Hello)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def host_addresses() -> list[str]:
    """Every IPv4 address of the host outside the lab pool and loopback (eth0, docker0, ...)."""
    listed = json.loads(subprocess.run(["ip", "-j", "-4", "addr"], capture_output=True, check=True).stdout)
    pool = ipaddress.ip_network(settings.LAB_SUBNET_POOL)
    found = [info["local"] for link in listed for info in link.get("addr_info", [])]
    return [a for a in found if not ipaddress.ip_address(a).is_loopback and ipaddress.ip_address(a) not in pool]


def start_app(engine: Engine, lab: str, network: Network, name: str, index: int) -> None:
    package = load_lab(LAB)
    app = package.spec.node("app")
    assert app.health is not None
    engine.start_node(
        NodeRun(
            lab=lab,
            owner=0,
            name=name,
            group="app",
            image=engine.ensure_image(package.build_context(app)),
            ip=network.address(index),
            env={"REPLICA_NAME": name},
            health=Health(command=app.health.command, interval=0.5, timeout=2, retries=2),
        ),
        network,
    )


def start_raw_sender(engine: Engine, lab: str) -> Network:
    """A lab network with app-1 running as root with NET_RAW, as specs allow a named image to:
    a node that can write any packet it likes."""
    network = engine.create_network(lab, 0)
    package = load_lab(LAB)
    engine.start_node(
        NodeRun(
            lab=lab,
            owner=0,
            name="app-1",
            group="app",
            image=engine.ensure_image(package.build_context(package.spec.node("app"))),
            ip=network.address(10),
            user="0",
            cap_add=["NET_RAW"],
        ),
        network,
    )
    return network


def wait_healthy(engine: Engine, labs: dict[str, set[str]], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        waiting = {
            (lab, name)
            for lab, names in labs.items()
            for name in names
            if (lab, name) not in {(s.lab, s.name) for s in engine.node_statuses(lab) if s.health == "healthy"}
        }
        if not waiting:
            return
        assert time.monotonic() < deadline, f"{sorted(waiting)} not healthy within {timeout:.0f}s"
        time.sleep(0.2)


def probe(engine: Engine, lab: str, node: str, urls: list[str]) -> dict[str, object]:
    result = engine.exec(lab, node, ["python3", "-c", PROBE, *urls], timeout=30)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def docker_user_and_input() -> str:
    """Every chain our rules live in, each line as `iptables -S` / `ip6tables -S` prints it, after
    the command's name."""
    chains = [("iptables", "INPUT"), ("iptables", "DOCKER-USER"), ("ip6tables", "INPUT"), ("ip6tables", "FORWARD")]
    return "".join(
        f"{command} {line}\n"
        for command, chain in chains
        for line in subprocess.run(
            [command, "-w", "-S", chain], capture_output=True, text=True, check=True
        ).stdout.splitlines()
    )


def test_a_node_reaches_no_host_service_and_no_other_lab_but_its_own_nodes(engine: Engine, host_port: int) -> None:
    # The listener answers on the host itself, so "unreachable" below is the firewall's doing.
    for address in ["127.0.0.1", *host_addresses()]:
        assert urllib.request.urlopen(f"http://{address}:{host_port}/", timeout=2).status == 200

    report = isolation.apply_isolation(settings.LAB_SUBNET_POOL)
    assert report.is_enforced, report.summary()

    lab_a, lab_b = f"iso{uuid.uuid4().hex[:6]}", f"iso{uuid.uuid4().hex[:6]}"
    try:
        net_a = engine.create_network(lab_a, 0)
        net_b = engine.create_network(lab_b, 0)
        start_app(engine, lab_a, net_a, "app-1", 10)
        start_app(engine, lab_a, net_a, "app-2", 11)
        start_app(engine, lab_b, net_b, "app-1", 10)
        wait_healthy(engine, {lab_a: {"app-1", "app-2"}, lab_b: {"app-1"}})

        host_urls = [f"http://{a}:{host_port}/" for a in [net_a.gateway, net_b.gateway, *host_addresses()]]
        own_peer = f"http://{net_a.address(11)}:{APP_PORT}/healthz"
        other_lab = f"http://{net_b.address(10)}:{APP_PORT}/healthz"
        seen = probe(engine, lab_a, "app-1", [*host_urls, other_lab, own_peer])
        print(f"from lab A's app-1 with the rules in place: {seen}")
        assert seen[own_peer] == 200
        for url in [*host_urls, other_lab]:
            assert seen[url] != 200, f"{url} answered a lab node"
        # And the other way round: lab B reaches neither lab A nor the host.
        seen = probe(engine, lab_b, "app-1", [f"http://{net_b.gateway}:{host_port}/", own_peer])
        assert 200 not in seen.values(), seen

        # The probe does reach the host when nothing drops it: only this lab's bridge, only this
        # listener, let through ahead of our rules. The lock keeps other appliers on this host
        # from moving our rules back on top while it is there.
        gateway_url = f"http://{net_a.gateway}:{host_port}/"
        opening = ["-i", engine.bridge_name(lab_a), "-p", "tcp", "--dport", str(host_port), "-j", "ACCEPT"]
        with isolation.applier_lock(), opened(opening):
            assert probe(engine, lab_a, "app-1", [gateway_url])[gateway_url] == 200
        assert probe(engine, lab_a, "app-1", [gateway_url])[gateway_url] != 200
    finally:
        # Whatever happened above, the host is left isolated, as the platform keeps it.
        isolation.apply_isolation(settings.LAB_SUBNET_POOL)
        engine.remove_lab(lab_a)
        engine.remove_lab(lab_b)


@contextmanager
def opened(spec: list[str]) -> Iterator[None]:
    """A narrow ACCEPT at the top of INPUT, for as long as the block runs."""
    subprocess.run(["iptables", "-w", "-I", "INPUT", "1", *spec], check=True)
    try:
        yield
    finally:
        subprocess.run(["iptables", "-w", "-D", "INPUT", *spec], check=True)


# Sends one UDP datagram from inside a node with a forged source address (needs NET_RAW and
# root in the node, which specs allow). Checksum 0: IPv4 lets UDP go without one.
SPOOF = """
import socket, struct, sys
source, target, port, payload = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4].encode()
udp = struct.pack("!HHHH", 40000, port, 8 + len(payload), 0) + payload
ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
                 socket.inet_aton(source), socket.inet_aton(target))
sender = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
for _ in range(3):
    sender.sendto(ip + udp, (target, 0))
"""
FORGED = "192.0.2.77"  # TEST-NET-1: outside the pool, as a forging node would pick


def received(listener: socket.socket, payload: bytes, within: float = 2.0) -> str | None:
    """The source address `payload` arrived from on the host within `within` seconds, if it did."""
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        listener.settimeout(left)
        try:
            data, address = listener.recvfrom(2048)  # IPv6 adds flow info and scope
        except TimeoutError:
            return None
        if data == payload:
            return address[0]
    return None


def test_a_node_that_forges_its_source_address_still_reaches_nothing_on_the_host(engine: Engine) -> None:
    report = isolation.apply_isolation(settings.LAB_SUBNET_POOL)
    assert report.is_enforced, report.summary()
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("0.0.0.0", 0))  # a host service on every interface
    port = listener.getsockname()[1]
    lab = f"iso{uuid.uuid4().hex[:6]}"
    try:
        network = start_raw_sender(engine, lab)

        def forge(payload: bytes) -> None:
            args = [FORGED, network.gateway, str(port), payload.decode()]
            result = engine.exec(lab, "app-1", ["python3", "-c", SPOOF, *args], timeout=30)
            assert result.exit_code == 0, result.output

        # Only this lab's bridge, only this listener: the forged datagram arrives, so it is sent.
        with (
            isolation.applier_lock(),
            opened(["-i", engine.bridge_name(lab), "-p", "udp", "--dport", str(port), "-j", "ACCEPT"]),
        ):
            forge(b"opened")
            assert received(listener, b"opened") == FORGED
        # With only the platform's rules, the same datagram is dropped: its source is no lab
        # address, but it arrives on a lab bridge.
        forge(b"closed")
        assert received(listener, b"closed") is None
    finally:
        listener.close()
        isolation.apply_isolation(settings.LAB_SUBNET_POOL)
        engine.remove_lab(lab)


THROWAWAY_POOL = "10.254.0.0/16"  # no lab's: its rules only drop more, and go at the end


def test_a_rule_deleted_by_hand_is_reported_and_put_back_once() -> None:
    """On a throwaway pool's rules, so the live rules for LAB_SUBNET_POOL stay in place."""
    try:
        assert isolation.apply_isolation(THROWAWAY_POOL).is_enforced
        # Each install applies its own pool and keeps the other's (two installs on one host).
        assert isolation.apply_isolation(settings.LAB_SUBNET_POOL).is_enforced
        assert isolation.check_isolation(THROWAWAY_POOL).is_enforced

        rules = isolation.desired_rules(THROWAWAY_POOL)
        gone = [
            next(rule for rule in rules if rule.chain == "DOCKER-USER"),
            next(rule for rule in rules if rule.family == isolation.IPV6),
        ]
        with isolation.applier_lock():
            for rule in gone:
                subprocess.run([rule.command, "-w", "-D", rule.chain, *rule.spec], check=True)
        check = isolation.check_isolation(THROWAWAY_POOL)
        assert [s.state for s in check.rules if s.rule in gone] == ["missing", "missing"]
        assert not check.is_enforced

        assert isolation.apply_isolation(THROWAWAY_POOL).is_enforced
        applied = docker_user_and_input()
        assert isolation.apply_isolation(THROWAWAY_POOL).is_enforced
        assert docker_user_and_input() == applied
        for rule in isolation.desired_rules(THROWAWAY_POOL):
            where = [rule.command, "-A", rule.chain, *rule.spec]
            assert sum(1 for line in applied.splitlines() if shlex.split(line) == where) == 1, applied
    finally:
        isolation.remove_isolation(THROWAWAY_POOL)
    assert THROWAWAY_POOL not in docker_user_and_input()


# Sends one IPv6 UDP datagram from inside a node as a raw Ethernet frame (AF_PACKET, needs
# NET_RAW and root in the node, which specs allow). The node's own IPv6 is off, but the frame
# goes to the bridge's MAC all the same, and the host has a link-local address on the bridge.
RAW_IPV6 = """
import socket, struct, sys
bridge_mac, source, target, port, payload = sys.argv[1:5] + [sys.argv[5].encode()]
src, dst = socket.inet_pton(socket.AF_INET6, source), socket.inet_pton(socket.AF_INET6, target)
length = 8 + len(payload)
def fold(data):
    data += b"\\0" * (len(data) % 2)
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total
udp = struct.pack("!HHHH", 40000, int(port), length, 0) + payload
pseudo = src + dst + struct.pack("!I3xB", length, socket.IPPROTO_UDP)
checksum = (~fold(pseudo + udp)) & 0xFFFF or 0xFFFF
udp = udp[:6] + struct.pack("!H", checksum) + udp[8:]
ipv6 = struct.pack("!IHBB", 6 << 28, length, socket.IPPROTO_UDP, 64) + src + dst
sender = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
sender.bind(("eth0", 0))
own_mac = sender.getsockname()[4]
frame = bytes.fromhex(bridge_mac.replace(":", "")) + own_mac + struct.pack("!H", 0x86DD) + ipv6 + udp
for _ in range(3):
    sender.send(frame)
"""
FORGED_V6 = "fe80::dead:beef"  # a made-up link-local source


def bridge_link_local(bridge: str) -> str | None:
    """The host's link-local address on a lab bridge, once usable (past duplicate detection)."""
    listed = json.loads(
        subprocess.run(["ip", "-j", "-6", "addr", "show", "dev", bridge], capture_output=True, check=True).stdout
    )
    for info in (a for link in listed for a in link.get("addr_info", [])):
        if info.get("scope") == "link" and not info.get("tentative"):
            return info["local"]
    return None


@contextmanager
def opened6(spec: list[str]) -> Iterator[None]:
    """A narrow ACCEPT at the top of ip6tables INPUT, for as long as the block runs."""
    subprocess.run(["ip6tables", "-w", "-I", "INPUT", "1", *spec], check=True)
    try:
        yield
    finally:
        subprocess.run(["ip6tables", "-w", "-D", "INPUT", *spec], check=True)


def test_a_node_that_sends_raw_ipv6_frames_reaches_nothing_on_the_host(engine: Engine) -> None:
    report = isolation.apply_isolation(settings.LAB_SUBNET_POOL)
    assert report.is_enforced, report.summary()
    listener = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    listener.bind(("::", 0))  # a host service on every interface, IPv6 included
    port = listener.getsockname()[1]
    lab = f"iso{uuid.uuid4().hex[:6]}"
    try:
        start_raw_sender(engine, lab)
        bridge = engine.bridge_name(lab)
        with open(f"/sys/class/net/{bridge}/address") as file:
            bridge_mac = file.read().strip()
        # The bridge's link-local address takes packets once duplicate detection is done (~1-2 s).
        deadline = time.monotonic() + 15
        while (target := bridge_link_local(bridge)) is None:
            assert time.monotonic() < deadline, f"{bridge} has no usable IPv6 link-local address"
            time.sleep(0.1)

        def send(payload: bytes) -> None:
            args = [bridge_mac, FORGED_V6, target, str(port), payload.decode()]
            result = engine.exec(lab, "app-1", ["python3", "-c", RAW_IPV6, *args], timeout=30)
            assert result.exit_code == 0, result.output

        # Only this lab's bridge, only this listener: the frame arrives, so it is sent and well formed.
        with (
            isolation.applier_lock(),
            opened6(["-i", bridge, "-p", "udp", "--dport", str(port), "-j", "ACCEPT"]),
        ):
            send(b"opened")
            assert received(listener, b"opened") == FORGED_V6
        # With only the platform's rules, the same frame is dropped: it arrives on a lab bridge.
        send(b"closed")
        assert received(listener, b"closed") is None, "a raw IPv6 frame from a lab node reached the host"
    finally:
        listener.close()
        isolation.apply_isolation(settings.LAB_SUBNET_POOL)
        engine.remove_lab(lab)
