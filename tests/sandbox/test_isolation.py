"""Lab isolation rules over a fake firewall: applying puts each rule on top of its chain once and
touches nothing of anyone else's, the check names what is missing, and a lab is not started
without them. (test_host_isolation.py proves the rules on the real host and engine.)"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Sequence

import pytest
from django.core.management import CommandError, call_command

from sandbox import isolation, lifecycle
from sandbox.isolation import IPV4, IPV6, MISPLACED, MISSING, OTHER, PRESENT, STALE, CommandResult
from sandbox.isolation import run_command as real_run_command  # before the autouse fixture swaps it
from sandbox.models import Lab
from tests.conftest import FakeEngine

POOL = "10.213.0.0/16"
DENIED = "iptables v1.8.9 (nf_tables): Could not fetch rule set generation id: Permission denied (you must be root)\n"


class FakeFirewall:
    """`iptables -w -S/-I/-D/-N` (and the same of `ip6tables`) over chains held in memory, printed
    the way iptables prints them. By default dockerd manages iptables only, as it does out of the box."""

    def __init__(
        self, denied: bool = False, docker_user: bool = True, jump_gaps: int = 0, docker_ipv6: bool = False
    ) -> None:
        self.chains: dict[str, list[tuple[str, ...]]] = {
            "INPUT": [("-i", "lo", "-j", "ACCEPT")],  # an admin's rule
            "FORWARD": [("-j", "DOCKER-USER"), ("-j", "DOCKER-ISOLATION-STAGE-1")],
        }
        if docker_user:
            self.chains["DOCKER-USER"] = [("-j", "RETURN")]
        self.chains6: dict[str, list[tuple[str, ...]]] = {
            "INPUT": [("-i", "lo", "-j", "ACCEPT")],
            "FORWARD": [("-o", "eth0", "-j", "ACCEPT")],  # an admin's rule
        }
        if docker_ipv6:  # dockerd with "ip6tables": true
            self.chains6["FORWARD"].insert(0, ("-j", "DOCKER-USER"))
            self.chains6["DOCKER-USER"] = [("-j", "RETURN")]
        self.denied = denied
        # How many reads of FORWARD still miss Docker's jump, as while `docker network create`
        # deletes and re-inserts it.
        self.jump_gaps = jump_gaps
        self.commands: list[list[str]] = []
        self.snapshots: list[dict[str, list[tuple[str, ...]]]] = []  # the chains after each change

    def changes(self) -> list[list[str]]:
        return [c for c in self.commands if c[2] != "-S"]

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        argv = list(argv)
        self.commands.append(argv)
        if self.denied:
            return CommandResult(4, "", DENIED)
        assert argv[0] in {"iptables", "ip6tables"} and argv[1] == "-w", argv
        chains = self.chains if argv[0] == "iptables" else self.chains6
        op, chain, rest = argv[2], argv[3], tuple(argv[4:])
        if op == "-N":
            chains[chain] = []
            return CommandResult(0, "", "")
        if chain not in chains:
            return CommandResult(
                1, "", f"{argv[0]} v1.8.9 (nf_tables): chain `{chain}' in table `filter' is incompatible\n"
            )
        rules = chains[chain]
        if op == "-S":
            head = f"-P {chain} ACCEPT" if chain in {"INPUT", "FORWARD"} else f"-N {chain}"
            if chain == "FORWARD" and chains is self.chains and self.jump_gaps > 0:
                self.jump_gaps -= 1
                rules = [r for r in rules if r != ("-j", "DOCKER-USER")]
            # As iptables prints them: a comment with ":" or "/" in double quotes.
            lines = [shlex.join(["-A", chain, *r]).replace("'", '"') for r in rules]
            return CommandResult(0, "\n".join([head, *lines]) + "\n", "")
        if op == "-I":
            rules.insert(int(rest[0]) - 1, rest[1:])
            self.snapshots.append({c: list(r) for c, r in self.chains.items()})
            return CommandResult(0, "", "")
        if op == "-D":
            if rest not in rules:
                return CommandResult(1, "", "iptables: Bad rule (does a matching rule exist in that chain?).\n")
            rules.remove(rest)
            self.snapshots.append({c: list(r) for c, r in self.chains.items()})
            return CommandResult(0, "", "")
        raise AssertionError(f"unexpected command {argv}")


@pytest.fixture
def firewall(settings, monkeypatch: pytest.MonkeyPatch) -> FakeFirewall:  # noqa: ANN001
    """The host's firewall as the platform's own code sees it, with isolation on."""
    settings.LAB_ISOLATION = True
    fake = FakeFirewall()
    monkeypatch.setattr(isolation, "run_command", fake)
    return fake


def specs(pool: str, chain: str, family: str = IPV4, ipv6_forward: str = "FORWARD") -> list[tuple[str, ...]]:
    return [r.spec for r in isolation.desired_rules(pool, ipv6_forward) if (r.family, r.chain) == (family, chain)]


def v4(states: list[isolation.RuleState], chain: str) -> list[str]:
    """The states of the IPv4 rules of one chain, in report order."""
    return [s.state for s in states if (s.rule.family, s.rule.chain) == (IPV4, chain)]


def test_applying_puts_each_rule_on_top_of_its_chain_and_keeps_everyone_elses() -> None:
    firewall = FakeFirewall()
    report = isolation.apply_isolation(POOL, run=firewall)
    assert report.is_enforced, report.summary()
    assert [s.state for s in report.rules] == [PRESENT] * 9
    assert sorted(firewall.chains["INPUT"][:2]) == sorted(specs(POOL, "INPUT"))
    assert firewall.chains["INPUT"][2:] == [("-i", "lo", "-j", "ACCEPT")]
    assert sorted(firewall.chains["DOCKER-USER"][:4]) == sorted(specs(POOL, "DOCKER-USER"))
    assert firewall.chains["DOCKER-USER"][4:] == [("-j", "RETURN")]
    assert firewall.chains["FORWARD"] == [("-j", "DOCKER-USER"), ("-j", "DOCKER-ISOLATION-STAGE-1")]
    # IPv6: dockerd left ip6tables alone, so the routed rules lead FORWARD itself.
    assert firewall.chains6["INPUT"] == [*specs(POOL, "INPUT", IPV6), ("-i", "lo", "-j", "ACCEPT")]
    assert sorted(firewall.chains6["FORWARD"][:2]) == sorted(specs(POOL, "FORWARD", IPV6))
    assert firewall.chains6["FORWARD"][2:] == [("-o", "eth0", "-j", "ACCEPT")]


def test_the_rules_drop_lab_traffic_to_the_host_and_other_networks_but_not_inside_a_lab() -> None:
    lines = [rule.line for rule in isolation.desired_rules(POOL)]
    mark = "-m comment --comment stacklab-lab-isolation:10.213.0.0/16 -j DROP"
    assert lines == [
        # By the bridge a packet arrives on (engine.bridge_name): a forged source changes nothing.
        f"-A INPUT -i sl-+ -m conntrack ! --ctstate RELATED,ESTABLISHED {mark}",
        # By address, also for lab networks made before bridges were named sl-<lab>.
        f"-A INPUT -s 10.213.0.0/16 -m conntrack ! --ctstate RELATED,ESTABLISHED {mark}",
        f"-A DOCKER-USER -i sl-+ -m physdev ! --physdev-is-bridged {mark}",
        f"-A DOCKER-USER -o sl-+ -m physdev ! --physdev-is-bridged {mark}",
        f"-A DOCKER-USER -s 10.213.0.0/16 -m physdev ! --physdev-is-bridged {mark}",
        f"-A DOCKER-USER -d 10.213.0.0/16 -m physdev ! --physdev-is-bridged {mark}",
        # IPv6, which labs do not use but a node with NET_RAW can send in raw frames: whatever
        # arrives on a lab bridge, and whatever is routed into or out of one.
        f"ip6tables -A INPUT -i sl-+ {mark}",
        f"ip6tables -A FORWARD -i sl-+ -m physdev ! --physdev-is-bridged {mark}",
        f"ip6tables -A FORWARD -o sl-+ -m physdev ! --physdev-is-bridged {mark}",
    ]


def test_applying_again_changes_nothing() -> None:
    firewall = FakeFirewall()
    isolation.apply_isolation(POOL, run=firewall)
    before = {chain: list(rules) for chain, rules in firewall.chains.items()}
    firewall.commands.clear()
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert firewall.changes() == []
    assert firewall.chains == before


def test_check_names_a_deleted_rule_missing_and_applying_puts_only_it_back() -> None:
    firewall = FakeFirewall()
    isolation.apply_isolation(POOL, run=firewall)
    gone = specs(POOL, "DOCKER-USER")[3]
    firewall.chains["DOCKER-USER"].remove(gone)

    report = isolation.check_isolation(POOL, run=firewall)
    assert not report.is_enforced
    assert [(s.rule.spec, s.state) for s in report.rules if s.state != PRESENT] == [(gone, MISSING)]
    assert "missing: -A DOCKER-USER -d 10.213.0.0/16" in report.summary()

    firewall.commands.clear()
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert firewall.changes() == [["iptables", "-w", "-I", "DOCKER-USER", "1", *gone]]


def test_a_rule_behind_someone_elses_is_misplaced_and_moved_to_the_top() -> None:
    firewall = FakeFirewall()
    # Appended after Docker's RETURN, as `iptables -A DOCKER-USER` would: never reached.
    firewall.chains["DOCKER-USER"] += specs(POOL, "DOCKER-USER")
    report = isolation.check_isolation(POOL, run=firewall)
    assert v4(report.rules, "DOCKER-USER") == [MISPLACED] * 4
    assert not report.is_enforced

    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert firewall.chains["DOCKER-USER"][-1] == ("-j", "RETURN")
    assert sorted(firewall.chains["DOCKER-USER"][:-1]) == sorted(specs(POOL, "DOCKER-USER"))
    # Never a moment without each rule: it moved under a stand-in that held its place.
    for chains in firewall.snapshots:
        assert all(
            spec in chains["DOCKER-USER"] or isolation._stand_in(spec) in chains["DOCKER-USER"][:4]
            for spec in specs(POOL, "DOCKER-USER")
        )


def test_a_rule_with_a_copy_behind_someone_elses_is_never_missing_while_it_is_tidied() -> None:
    firewall = FakeFirewall()
    isolation.apply_isolation(POOL, run=firewall)
    top = specs(POOL, "INPUT")[0]
    firewall.chains["INPUT"].append(top)  # a copy after the admin's ACCEPT
    firewall.snapshots.clear()

    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert firewall.snapshots, "the copy was left in place"
    for chains in firewall.snapshots:
        leading = chains["INPUT"][: chains["INPUT"].index(("-i", "lo", "-j", "ACCEPT"))]
        assert top in leading or isolation._stand_in(top) in leading, chains["INPUT"]
    assert firewall.chains["INPUT"].count(top) == 1
    assert firewall.chains["INPUT"][-1] == ("-i", "lo", "-j", "ACCEPT")


def test_a_second_copy_is_reported_and_removed() -> None:
    firewall = FakeFirewall()
    isolation.apply_isolation(POOL, run=firewall)
    firewall.chains["INPUT"].insert(0, specs(POOL, "INPUT")[0])
    report = isolation.check_isolation(POOL, run=firewall)
    assert v4(report.rules, "INPUT") == [PRESENT, PRESENT, STALE]
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert sorted(firewall.chains["INPUT"][:2]) == sorted(specs(POOL, "INPUT"))
    assert firewall.chains["INPUT"][2:] == [("-i", "lo", "-j", "ACCEPT")]


def test_another_pools_rules_are_kept_until_remove_stale_and_an_admins_always() -> None:
    firewall = FakeFirewall()
    isolation.apply_isolation("10.99.0.0/16", run=firewall)  # another install on this host
    admins = ("-s", "10.99.0.0/16", "-j", "DROP")  # the same addresses, but not ours
    firewall.chains["INPUT"].append(admins)
    others = {chain: list(rules) for chain, rules in firewall.chains.items()}

    report = isolation.check_isolation(POOL, run=firewall)
    assert sorted(s.state for s in report.rules) == [MISSING] * 9 + [OTHER] * 9
    assert "pool 10.99.0.0/16: kept" in report.rules[-1].rule.purpose

    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    for chain in ("INPUT", "DOCKER-USER"):
        assert firewall.chains[chain][-len(others[chain]) :] == others[chain]
    assert len(firewall.chains6["INPUT"]) == 3  # ours, the other install's, the admin's
    assert isolation.check_isolation("10.99.0.0/16", run=firewall).is_enforced  # the other install's too

    assert isolation.apply_isolation(POOL, run=firewall, remove_stale=True).is_enforced
    assert sorted(firewall.chains["INPUT"]) == sorted([*specs(POOL, "INPUT"), ("-i", "lo", "-j", "ACCEPT"), admins])
    assert sorted(firewall.chains["DOCKER-USER"]) == sorted([*specs(POOL, "DOCKER-USER"), ("-j", "RETURN")])


def test_rules_of_the_first_format_are_other_and_go_only_with_remove_stale(
    capsys: pytest.CaptureFixture[str],
    firewall: FakeFirewall,
) -> None:
    first = (
        "-s",
        POOL,
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-m",
        "comment",
        "--comment",
        "stacklab-lab-isolation",
        "-j",
        "DROP",
    )
    firewall.chains["INPUT"].insert(0, first)

    call_command("lab_isolation")
    assert first in firewall.chains["INPUT"]
    assert f"other     -A INPUT {' '.join(first)}" in capsys.readouterr().out.replace("'", "")

    with pytest.raises(CommandError, match="choose one"):
        call_command("lab_isolation", "--check", "--remove-stale")
    assert first in firewall.chains["INPUT"]
    call_command("lab_isolation", "--remove-stale")
    assert first not in firewall.chains["INPUT"]
    assert isolation.check_isolation(POOL, run=firewall).is_enforced


def test_our_own_pools_leftovers_are_removed_by_applying() -> None:
    firewall = FakeFirewall()
    isolation.apply_isolation(POOL, run=firewall)
    left = isolation._stand_in(specs(POOL, "INPUT")[0])  # as a crash in the middle of a move leaves it
    firewall.chains["INPUT"].insert(0, left)
    assert [s.state for s in isolation.check_isolation(POOL, run=firewall).rules if s.rule.spec == left] == [STALE]
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert left not in firewall.chains["INPUT"]


def test_docker_user_is_created_when_dockerd_has_not_made_it_yet() -> None:
    firewall = FakeFirewall(docker_user=False)
    report = isolation.check_isolation(POOL, run=firewall)
    assert v4(report.rules, "DOCKER-USER") == [MISSING] * 4
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert sorted(firewall.chains["DOCKER-USER"]) == sorted(specs(POOL, "DOCKER-USER"))


def test_rules_that_forward_never_reaches_are_not_isolation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "JUMP_GRACE", 0.3)
    firewall = FakeFirewall()
    firewall.chains["FORWARD"] = []  # dockerd with iptables off
    report = isolation.apply_isolation(POOL, run=firewall)
    assert not report.is_enforced
    assert "FORWARD does not jump to DOCKER-USER" in report.summary()


def test_a_jump_docker_is_putting_back_does_not_refuse_a_lab(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
    settings,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`docker network create` (another lab starting) removes and re-inserts FORWARD's jump."""
    settings.LAB_ISOLATION = True
    firewall = FakeFirewall()
    isolation.apply_isolation(POOL, run=firewall)
    # The next two reads of FORWARD fall in Docker's gap: a check, and the one after applying.
    firewall.jump_gaps = 2
    firewall.commands.clear()
    monkeypatch.setattr(isolation, "run_command", firewall)
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.READY, lab.reason
    assert firewall.jump_gaps == 0
    assert firewall.changes() == []


def test_without_root_the_report_says_why() -> None:
    report = isolation.apply_isolation(POOL, run=FakeFirewall(denied=True))
    assert not report.is_enforced
    assert report.summary() == (
        "not enforced for 10.213.0.0/16: `iptables -S INPUT` failed: iptables v1.8.9 (nf_tables): Could not fetch "
        "rule set generation id: Permission denied (you must be root)"
    )
    assert [s.state for s in report.rules] == [MISSING] * 9
    assert report.lacks_privilege


def test_without_iptables_the_report_says_it_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "IPTABLES", "stacklab-no-such-iptables")
    report = isolation.check_isolation(POOL, run=real_run_command)
    assert report.problem == "stacklab-no-such-iptables is not installed on this host"
    assert not report.is_enforced


def test_an_ipv6_pool_is_refused_with_a_reason() -> None:
    report = isolation.check_isolation("fd00:213::/48", run=FakeFirewall())
    assert report.problem == "lab isolation handles IPv4 pools only, not fd00:213::/48"


def test_a_lab_is_not_started_when_its_isolation_cannot_be_put_in_place(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
    settings,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.LAB_ISOLATION = True
    monkeypatch.setattr(isolation, "run_command", FakeFirewall(denied=True))
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    with caplog.at_level(logging.INFO):
        lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    # A configuration the administrator fixes, said in words: no traceback in the log.
    assert [r.getMessage() for r in caplog.records if r.exc_info] == []
    assert lab.state == Lab.State.FAILED
    # A worker run as an ordinary user (`make run` in the docker group): the reason says what to do.
    assert lab.reason == (
        "This installation cannot keep labs off its host right now, so the lab was not started: its worker "
        "may not read the host firewall. Run the worker as root, or set STACKLAB_LAB_ISOLATION=false knowing "
        "that labs can then reach this host's services."
    )
    assert fake_engine.networks == set()
    assert fake_engine.nodes == {}


def test_a_lab_refused_for_another_cause_points_at_the_check(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
    settings,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.LAB_ISOLATION = True
    monkeypatch.setattr(isolation, "JUMP_GRACE", 0.3)
    firewall = FakeFirewall()
    firewall.chains["FORWARD"] = []  # dockerd with iptables off
    monkeypatch.setattr(isolation, "run_command", firewall)
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.FAILED
    assert lab.reason == (
        "This installation cannot keep labs off its host right now, so the lab was not started. "
        "An administrator can see why with `manage.py lab_isolation --check`."
    )


def test_missing_rules_are_put_back_before_a_lab_starts(
    learner,  # noqa: ANN001
    fake_engine: FakeEngine,
    firewall: FakeFirewall,
) -> None:
    lab, _ = lifecycle.request_lab(learner, "scaling-load-balancer", "load-balancing")
    lifecycle.provision_lab(str(lab.id), engine_factory=lambda: fake_engine)
    lab.refresh_from_db()
    assert lab.state == Lab.State.READY
    assert isolation.check_isolation(POOL, run=firewall).is_enforced


def test_lab_isolation_check_lists_each_rule_and_fails_while_one_is_missing(
    capsys: pytest.CaptureFixture[str],
    firewall: FakeFirewall,
) -> None:
    with pytest.raises(CommandError, match="lab isolation not enforced for 10.213.0.0/16: missing: -A INPUT"):
        call_command("lab_isolation", "--check")
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line[10:].startswith(("-A", "ip6tables -A"))]
    assert listed == [MISSING] * 9
    assert "missing   ip6tables -A INPUT -i sl-+ -m comment" in out
    assert firewall.changes() == []

    call_command("lab_isolation")
    out = capsys.readouterr().out
    listed = [line.split()[0] for line in out.splitlines() if line[10:].startswith(("-A", "ip6tables -A"))]
    assert listed == [PRESENT] * 9
    assert out.splitlines()[-1] == "lab isolation enforced for 10.213.0.0/16 (9 rules in place)"
    call_command("lab_isolation", "--check")


def test_lab_isolation_when_off_changes_nothing_and_prints_the_rules_to_apply_elsewhere(
    capsys: pytest.CaptureFixture[str],
) -> None:
    call_command("lab_isolation")  # off in unit tests; the firewall is out of reach
    out = capsys.readouterr().out
    assert out.startswith("lab isolation is off (STACKLAB_LAB_ISOLATION=false)")
    assert "  iptables -I INPUT 1 -i sl-+ -m conntrack '!' --ctstate RELATED,ESTABLISHED" in out
    assert "  ip6tables -I INPUT 1 -i sl-+ -m comment --comment stacklab-lab-isolation:10.213.0.0/16 -j DROP" in out


def test_a_worker_that_cannot_isolate_labs_says_so_in_one_line(
    settings,  # noqa: ANN001
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.LAB_ISOLATION = True
    monkeypatch.setattr(isolation, "run_command", FakeFirewall(denied=True))
    with caplog.at_level(logging.INFO, logger="sandbox.isolation"):
        isolation.install_at_start("worker")
    [record] = caplog.records
    assert record.levelno == logging.ERROR
    assert record.exc_info is None
    assert record.getMessage().startswith(
        "worker: lab isolation not enforced for 10.213.0.0/16: `iptables -S INPUT` failed: "
    )
    assert record.getMessage().endswith(
        "Labs will not start until it is in place: the worker itself must read the host firewall (root, or "
        "CAP_NET_ADMIN) before every lab it starts: run the worker as root, or set STACKLAB_LAB_ISOLATION=false "
        "knowing that labs can then reach every service this host binds on all interfaces"
    )


def test_a_starting_worker_puts_the_rules_in_place(
    firewall: FakeFirewall,
) -> None:
    from sandbox.tasks import isolate_labs_at_start  # connected to Celery's worker_init

    isolate_labs_at_start()
    assert isolation.check_isolation(POOL, run=firewall).is_enforced


def test_beat_puts_back_a_rule_that_went_missing_while_labs_run(
    settings,  # noqa: ANN001
    caplog: pytest.LogCaptureFixture,
    firewall: FakeFirewall,
) -> None:
    from sandbox import tasks

    isolation.apply_isolation(POOL, run=firewall)
    firewall.chains["INPUT"].remove(specs(POOL, "INPUT")[0])  # a firewall reload, say

    assert settings.CELERY_BEAT_SCHEDULE["keep-lab-isolation"]["task"] == "sandbox.tasks.keep_lab_isolation"
    with caplog.at_level(logging.INFO, logger="sandbox.isolation"):
        tasks.keep_lab_isolation()
    assert isolation.check_isolation(POOL, run=firewall).is_enforced
    [record] = caplog.records
    assert record.getMessage().startswith("lab isolation not enforced for 10.213.0.0/16: missing: -A INPUT")
    assert record.getMessage().endswith("; applying the rules again")

    caplog.clear()
    firewall.commands.clear()
    tasks.keep_lab_isolation()  # nothing missing: nothing changed, nothing said
    assert firewall.changes() == []
    assert caplog.records == []


def test_a_deleted_ipv6_rule_is_reported_missing_and_only_it_is_put_back() -> None:
    firewall = FakeFirewall()
    isolation.apply_isolation(POOL, run=firewall)
    gone = specs(POOL, "INPUT", IPV6)[0]
    firewall.chains6["INPUT"].remove(gone)

    report = isolation.check_isolation(POOL, run=firewall)
    assert not report.is_enforced
    assert [(s.rule.family, s.rule.spec, s.state) for s in report.rules if s.state != PRESENT] == [
        (IPV6, gone, MISSING)
    ]
    assert "missing: ip6tables -A INPUT -i sl-+" in report.summary()

    firewall.commands.clear()
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert firewall.changes() == [["ip6tables", "-w", "-I", "INPUT", "1", *gone]]
    firewall.commands.clear()
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert firewall.changes() == []


def test_ipv6_rules_behind_someone_elses_are_moved_to_the_top() -> None:
    firewall = FakeFirewall()
    firewall.chains6["FORWARD"] += specs(POOL, "FORWARD", IPV6)  # after the admin's ACCEPT: never reached
    report = isolation.check_isolation(POOL, run=firewall)
    assert [s.state for s in report.rules if (s.rule.family, s.rule.chain) == (IPV6, "FORWARD")] == [MISPLACED] * 2
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert sorted(firewall.chains6["FORWARD"][:2]) == sorted(specs(POOL, "FORWARD", IPV6))
    assert firewall.chains6["FORWARD"][2:] == [("-o", "eth0", "-j", "ACCEPT")]


def test_when_dockerd_manages_ip6tables_the_routed_ipv6_rules_go_in_its_docker_user(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    firewall = FakeFirewall(docker_ipv6=True)
    left = specs(POOL, "FORWARD", IPV6)[0]
    firewall.chains6["FORWARD"].insert(0, left)  # ours, from before dockerd took IPv6 over
    assert isolation.apply_isolation(POOL, run=firewall).is_enforced
    assert sorted(firewall.chains6["DOCKER-USER"][:2]) == sorted(specs(POOL, "DOCKER-USER", IPV6, "DOCKER-USER"))
    assert firewall.chains6["DOCKER-USER"][2:] == [("-j", "RETURN")]
    assert firewall.chains6["FORWARD"] == [("-j", "DOCKER-USER"), ("-o", "eth0", "-j", "ACCEPT")]

    # Docker's jump is what makes them count, as for IPv4.
    monkeypatch.setattr(isolation, "JUMP_GRACE", 0.3)
    firewall.chains6["FORWARD"].remove(("-j", "DOCKER-USER"))
    report = isolation.check_isolation(POOL, run=firewall)
    assert not report.is_enforced
    assert "FORWARD does not jump to DOCKER-USER" in report.summary()


def test_without_ip6tables_the_report_says_it_is_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(isolation, "IP6TABLES", "stacklab-no-such-ip6tables")
    firewall = FakeFirewall()

    def iptables_only(argv: Sequence[str]) -> CommandResult:
        return firewall(argv) if argv[0] == "iptables" else real_run_command(argv)

    report = isolation.apply_isolation(POOL, run=iptables_only)
    assert report.problem == "stacklab-no-such-ip6tables is not installed on this host"
    assert not report.is_enforced
