"""Engine pieces that need no engine: build-context digests decide whether an image is rebuilt."""

from __future__ import annotations

from pathlib import Path

from sandbox.engine import Network, context_digest


def test_unchanged_context_keeps_its_digest_and_a_change_moves_it(tmp_path: Path) -> None:
    (tmp_path / "Dockerfile").write_text("FROM debian:bookworm-slim\n")
    (tmp_path / "app.py").write_text("print('hi')\n")
    first = context_digest(tmp_path)
    assert context_digest(tmp_path) == first
    (tmp_path / "app.py").write_text("print('hello')\n")
    assert context_digest(tmp_path) != first


def test_renaming_a_file_changes_the_digest(tmp_path: Path) -> None:
    (tmp_path / "a.conf").write_text("x")
    before = context_digest(tmp_path)
    (tmp_path / "a.conf").rename(tmp_path / "b.conf")
    assert context_digest(tmp_path) != before


def test_node_addresses_start_inside_the_lab_subnet() -> None:
    network = Network(name="n", subnet="10.213.4.0/24", gateway="10.213.4.1")
    assert network.address(10) == "10.213.4.10"
