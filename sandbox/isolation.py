"""Lab isolation on the engine's host: firewall rules that keep labs from reaching the host and
anything outside their own network, installed at start, checked before a lab starts, reported by
`manage.py lab_isolation`.

A lab network is `internal`, yet the host has an address on it (the gateway) and nodes route to
it: a service the host binds on all interfaces answers them. So, for every lab bridge (named
`sl-<lab>`, see engine.LAB_BRIDGE_PREFIX) and the whole lab subnet pool:

- INPUT: drop what a lab sends to the host itself (gateway, eth0, docker0, ... addresses), except
  replies to connections the host opened;
- DOCKER-USER (FORWARD; Docker keeps it across restarts and never flushes it): drop what a lab
  sends to, or receives from, any other network. Traffic between two nodes of one lab is bridged
  inside the lab's own bridge, not routed, so it passes.

Matching the bridge (`-i sl-+`) holds even against a node with NET_RAW that forges its source
address; matching the pool (`-s <pool>`) also covers networks made before bridges were named.

IPv6 too: a lab's nodes have it off, but the host gives every bridge a link-local address, and a
node with NET_RAW can write raw Ethernet frames carrying IPv6 to the bridge's MAC (and read the
replies), reaching any host service bound to `[::]`. So ip6tables drops everything that arrives
on a lab bridge (nothing of ours speaks IPv6 to a lab, so there is no reply to let through), and
everything routed into or out of one: in DOCKER-USER when dockerd manages ip6tables (it then
made that chain and jumps to it), else at the top of FORWARD itself. IPv6 has no pool
rules: labs have no IPv6 addresses to match.

The rules go through `iptables`, the same front end (and so the same nf_tables backend) Docker
uses for its own. Each carries the comment `MARKER:<pool>`, so applying finds its own rules
again: it adds what is missing and removes copies, and never touches anyone else's. Rules for
another pool (a second install on this host, an old LAB_SUBNET_POOL) are reported and kept until
`manage.py lab_isolation --remove-stale`.
"""

from __future__ import annotations

import fcntl
import ipaddress
import logging
import shlex
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .engine import LAB_BRIDGE_PREFIX, EngineError

logger = logging.getLogger(__name__)

MARKER = "stacklab-lab-isolation"  # the comment on each rule is MARKER:<pool>
IPTABLES = "iptables"
IP6TABLES = "ip6tables"
IPV4, IPV6 = "ipv4", "ipv6"  # the families of our rules, each with its own front end and chains
# Seconds one iptables call may take: -w makes it wait for another writer's xtables lock.
COMMAND_TIMEOUT = 20
# Serialises our own appliers (the worker's processes, `manage.py lab_isolation`, tests) so two
# never add the same rule at once. /run/lock is the host's, not a private /tmp a supervisor may give a process.
LOCK_PATH = Path("/run/lock/stacklab-lab-isolation.lock")
DOCKER_USER_JUMP = ("-j", "DOCKER-USER")
# Docker 20.10 deletes and re-inserts its FORWARD jump on every `docker network create`: a lab
# starting beside a check leaves it missing for a moment. Only a jump gone this long counts.
JUMP_GRACE = 2.0
JUMP_POLL = 0.1

# States of a rule in the report.
PRESENT = "present"  # in its chain, ahead of every rule that is not ours
MISSING = "missing"
MISPLACED = "misplaced"  # in its chain, but after a rule of someone else's that may decide first
STALE = "stale"  # ours, for our pool, but not wanted (a second copy): removed when applied
# Ours in kind, for another pool (another install on this host, an old LAB_SUBNET_POOL) or of the
# first format, whose comment named no pool: kept, removed only by `lab_isolation --remove-stale`.
OTHER = "other"


class IsolationUnavailable(Exception):
    """The firewall cannot be read or changed here (no iptables, not root)."""


class IsolationMissing(EngineError):
    """A lab would start without its isolation: provisioning refuses."""


@dataclass(frozen=True)
class CommandResult:
    returncode: int
    stdout: str
    stderr: str


Runner = Callable[[Sequence[str]], CommandResult]


def run_command(argv: Sequence[str]) -> CommandResult:
    """Run one iptables command on this host."""
    try:
        done = subprocess.run(list(argv), capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False)
    except FileNotFoundError as exc:
        raise IsolationUnavailable(f"{argv[0]} is not installed on this host") from exc
    except subprocess.TimeoutExpired as exc:
        raise IsolationUnavailable(f"`{shlex.join(argv)}` did not finish within {COMMAND_TIMEOUT}s") from exc
    return CommandResult(done.returncode, done.stdout, done.stderr)


@dataclass(frozen=True)
class Rule:
    """One rule of ours: its chain and its spec, spelled as `iptables -S` prints it."""

    chain: str
    spec: tuple[str, ...]
    purpose: str = ""
    family: str = IPV4

    @property
    def command(self) -> str:
        return _command(self.family)

    @property
    def line(self) -> str:
        """As `iptables -S` prints it (no word of ours holds a space); an IPv6 rule names ip6tables."""
        words = ["-A", self.chain, *self.spec]
        return " ".join(words if self.family == IPV4 else [IP6TABLES, *words])


def _command(family: str) -> str:
    # Looked up at call time, so tests can swap the names for ones that are not installed.
    return IPTABLES if family == IPV4 else IP6TABLES


@dataclass(frozen=True)
class RuleState:
    rule: Rule
    state: str


@dataclass(frozen=True)
class IsolationReport:
    pool: str
    rules: list[RuleState]
    # Docker's own `-A FORWARD -j DOCKER-USER` (in ip6tables too when our IPv6 rules are in its
    # DOCKER-USER): without it (dockerd with iptables off, or not started yet) the DOCKER-USER
    # rules are never consulted.
    docker_user_reached: bool
    problem: str | None = None

    @property
    def is_enforced(self) -> bool:
        return (
            self.problem is None
            and self.docker_user_reached
            and all(s.state == PRESENT for s in self.rules if s.state not in {STALE, OTHER})
        )

    @property
    def lacks_privilege(self) -> bool:
        """The firewall could not be read for want of root (CAP_NET_ADMIN)."""
        return self.problem is not None and "permission denied" in self.problem.lower()

    def summary(self) -> str:
        if self.problem is not None:
            return f"not enforced for {self.pool}: {self.problem}"
        if self.is_enforced:
            return f"enforced for {self.pool} ({sum(s.state == PRESENT for s in self.rules)} rules in place)"
        wrong = [f"{s.state}: {s.rule.line}" for s in self.rules if s.state not in {PRESENT, STALE, OTHER}]
        if not self.docker_user_reached:
            wrong.append("FORWARD does not jump to DOCKER-USER (is dockerd running, with iptables on?)")
        return f"not enforced for {self.pool}: " + "; ".join(wrong)


def _network(pool: str) -> str:
    try:
        network = ipaddress.ip_network(pool)
    except ValueError as exc:
        raise IsolationUnavailable(f"LAB_SUBNET_POOL {pool!r} is not a network: {exc}") from exc
    if network.version != 4:
        raise IsolationUnavailable(f"lab isolation handles IPv4 pools only, not {pool}")
    return str(network)


def desired_rules(pool: str, ipv6_forward: str = "FORWARD") -> list[Rule]:
    """The rules that isolate every lab bridge and every lab network carved from `pool`;
    `ipv6_forward` is the ip6tables chain for routed traffic (see _ipv6_forward_chain)."""
    subnet = _network(pool)
    comment = ("-m", "comment", "--comment", f"{MARKER}:{subnet}")
    not_bridged = ("-m", "physdev", "!", "--physdev-is-bridged")
    new = ("-m", "conntrack", "!", "--ctstate", "RELATED,ESTABLISHED")
    bridges = LAB_BRIDGE_PREFIX + "+"  # iptables' wildcard: every interface named sl-...
    return [
        Rule(
            "INPUT",
            ("-i", bridges, *new, *comment, "-j", "DROP"),
            "labs reach nothing on this host, whatever source address they forge; replies to connections "
            "the host opens pass",
        ),
        Rule(
            "INPUT",
            ("-s", subnet, *new, *comment, "-j", "DROP"),
            "the same by address, for lab networks made before bridges were named sl-...",
        ),
        Rule(
            "DOCKER-USER",
            ("-i", bridges, *not_bridged, *comment, "-j", "DROP"),
            "labs reach nothing outside their own network; traffic inside one lab is bridged and passes",
        ),
        Rule(
            "DOCKER-USER",
            ("-o", bridges, *not_bridged, *comment, "-j", "DROP"),
            "nothing outside a lab's network reaches into it",
        ),
        Rule(
            "DOCKER-USER",
            ("-s", subnet, *not_bridged, *comment, "-j", "DROP"),
            "by address, for lab networks made before bridges were named sl-...: nothing they send is routed",
        ),
        Rule(
            "DOCKER-USER",
            ("-d", subnet, *not_bridged, *comment, "-j", "DROP"),
            "and nothing is routed into them",
        ),
        Rule(
            "INPUT",
            ("-i", bridges, *comment, "-j", "DROP"),
            "nothing a lab sends over IPv6 (raw frames from a node with NET_RAW) reaches this host; the host "
            "opens nothing to a lab over IPv6, so there is no reply to let through",
            IPV6,
        ),
        Rule(
            ipv6_forward,
            ("-i", bridges, *not_bridged, *comment, "-j", "DROP"),
            "nothing a lab sends over IPv6 is routed anywhere",
            IPV6,
        ),
        Rule(
            ipv6_forward,
            ("-o", bridges, *not_bridged, *comment, "-j", "DROP"),
            "nothing is routed into a lab over IPv6",
            IPV6,
        ),
    ]


def _marked_pool(spec: Sequence[str]) -> str | None:
    """The pool a rule of ours names in its comment ("" for the first format, which named none);
    None for a rule that is not ours."""
    for a, b in zip(spec, spec[1:], strict=False):
        if a == "--comment" and (b == MARKER or b.startswith(MARKER + ":")):
            return b[len(MARKER) + 1 :].split(":")[0]
    return None


def _is_ours(spec: Sequence[str]) -> bool:
    return _marked_pool(spec) is not None


def _chain(run: Runner, chain: str, family: str = IPV4) -> list[tuple[str, ...]] | None:
    """The rules of a chain as `-A chain` specs (without `-A chain`); None if there is no chain."""
    command = _command(family)
    result = run([command, "-w", "-S", chain])
    if result.returncode != 0:
        # iptables-nft 1.8.9 calls a chain that does not exist "incompatible"; older ones say so.
        if any(words in result.stderr.lower() for words in ("no chain", "incompatible")):
            return None
        raise IsolationUnavailable(f"`{command} -S {chain}` failed: {result.stderr.strip() or result.returncode}")
    rules = []
    for line in result.stdout.splitlines():
        words = shlex.split(line)
        if len(words) >= 2 and words[0] == "-A" and words[1] == chain:
            rules.append(tuple(words[2:]))
    return rules


def _leading(rules: list[tuple[str, ...]]) -> int:
    """How many rules at the top of a chain are ours: those decide before anyone else's."""
    count = 0
    while count < len(rules) and _is_ours(rules[count]):
        count += 1
    return count


def _ipv6_forward_chain(run: Runner) -> str:
    """Where our routed IPv6 rules go: DOCKER-USER when dockerd manages ip6tables (it made the
    chain, jumps to it from FORWARD and inserts that jump on top again and again), else FORWARD."""
    return "DOCKER-USER" if _chain(run, "DOCKER-USER", IPV6) is not None else "FORWARD"


# Every chain that may hold rules of ours.
ALL_CHAINS = [(IPV4, "INPUT"), (IPV4, "DOCKER-USER"), (IPV6, "INPUT"), (IPV6, "DOCKER-USER"), (IPV6, "FORWARD")]


def _chains(run: Runner, pool: str) -> Iterator[tuple[str, str, list[Rule]]]:
    """Each (family, chain) that holds rules of ours, with the rules wanted in it. IPv4 first, so
    a worker without root hears about iptables. FORWARD in ip6tables is read even when our rules
    belong in DOCKER-USER: ours left there before dockerd took IPv6 over are stale."""
    for chain in ("INPUT", "DOCKER-USER"):
        yield IPV4, chain, [r for r in desired_rules(pool) if (r.family, r.chain) == (IPV4, chain)]
    ipv6_forward = _ipv6_forward_chain(run)
    wanted = [r for r in desired_rules(pool, ipv6_forward) if r.family == IPV6]
    for chain in dict.fromkeys(["INPUT", ipv6_forward, "FORWARD"]):
        yield IPV6, chain, [r for r in wanted if r.chain == chain]


def _states(
    wanted: list[Rule], chain: str, rules: list[tuple[str, ...]] | None, pool: str, family: str = IPV4
) -> list[RuleState]:
    """Each wanted rule of `chain` as present, missing or misplaced, plus our rules not wanted."""
    rules = rules or []
    leading = _leading(rules)
    states = []
    for rule in wanted:
        if rule.spec in rules[:leading]:
            states.append(RuleState(rule, PRESENT))
        elif rule.spec in rules:
            states.append(RuleState(rule, MISPLACED))
        else:
            states.append(RuleState(rule, MISSING))
    wanted_specs = {rule.spec for rule in wanted}
    seen: set[tuple[str, ...]] = set()
    for spec in rules:
        marked = _marked_pool(spec)
        if marked is None:
            continue
        if marked != pool:
            why = f"for pool {marked}" if marked else "of the first format (no pool named)"
            purpose = f"{why}: kept (another install on this host?); `lab_isolation --remove-stale` removes it"
            states.append(RuleState(Rule(chain, spec, purpose, family), OTHER))
            continue
        if spec in wanted_specs and spec not in seen:
            seen.add(spec)
            continue
        why = "a second copy" if spec in wanted_specs else "not wanted"
        states.append(RuleState(Rule(chain, spec, f"{why}: removed when the rules are applied", family), STALE))
    return states


def check_isolation(pool: str, run: Runner | None = None) -> IsolationReport:
    """What of the isolation for `pool` is in place on this host, rule by rule."""
    # Looked up at call time, so tests can swap `run_command` for a fake firewall.
    run = run or run_command
    try:
        subnet = _network(pool)
        states: list[RuleState] = []
        for family, chain, mine in _chains(run, pool):
            states += _states(mine, chain, _chain(run, chain, family), subnet, family)
        # The families whose DOCKER-USER holds rules of ours: their FORWARD must jump to it.
        jumping = {IPV4} | {s.rule.family for s in states if s.rule.chain == "DOCKER-USER" and s.state != OTHER}

        def reached() -> bool:
            return all(DOCKER_USER_JUMP in (_chain(run, "FORWARD", family) or []) for family in jumping)

        docker_user_reached = reached()
        if all(s.state == PRESENT for s in states if s.state not in {STALE, OTHER}):
            # A jump missing for a moment is Docker re-inserting it (JUMP_GRACE): look again.
            deadline = time.monotonic() + JUMP_GRACE
            while not docker_user_reached and time.monotonic() < deadline:
                time.sleep(JUMP_POLL)
                docker_user_reached = reached()
    except IsolationUnavailable as exc:
        return IsolationReport(pool, [RuleState(rule, MISSING) for rule in _wanted_or_none(pool)], False, str(exc))
    return IsolationReport(pool, states, docker_user_reached)


def _wanted_or_none(pool: str) -> list[Rule]:
    try:
        return desired_rules(pool)
    except IsolationUnavailable:
        return []


def _must(run: Runner, argv: Sequence[str]) -> None:
    result = run(argv)
    if result.returncode != 0:
        raise IsolationUnavailable(f"`{shlex.join(argv)}` failed: {result.stderr.strip() or result.returncode}")


def _delete_copies(run: Runner, chain: str, spec: Sequence[str], copies: int, family: str = IPV4) -> None:
    # -D removes the first rule equal to the spec; ours carry MARKER, so it is always one of ours.
    for _ in range(copies):
        _must(run, [_command(family), "-w", "-D", chain, *spec])


def _stand_in(spec: tuple[str, ...]) -> tuple[str, ...]:
    """The same rule under another comment of ours: it holds the line while the rule moves."""
    words = list(spec)
    at = words.index("--comment") + 1
    words[at] += ":moving"  # still MARKER:<pool>: a stand-in left by a crash is our pool's STALE
    return tuple(words)


@contextmanager
def applier_lock() -> Iterator[None]:
    """Held by whoever changes our rules on this host; the others wait their turn."""
    try:
        try:
            handle = LOCK_PATH.open("a")
        except PermissionError:
            # Made by root (the worker unit's ExecStartPre): flock needs only a file opened to read.
            handle = LOCK_PATH.open("r")
    except OSError:
        # No lock to share (no /run/lock, or not writable): iptables will refuse us anyway.
        yield
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def apply_isolation(pool: str, run: Runner | None = None, remove_stale: bool = False) -> IsolationReport:
    """Bring this host's rules for `pool` to exactly the wanted ones, then report.

    1. Create DOCKER-USER if dockerd has not yet (it adopts an existing one, as documented); in
       ip6tables only dockerd makes it, else our IPv6 rules go in FORWARD.
    2. Per chain: insert each missing rule at the top, ahead of anything else.
    3. A copied rule: remove the copies below the one on top. A misplaced rule: a stand-in (the
       same rule, another comment) goes on top first, then every copy comes out, the rule goes
       back on top and the stand-in comes out, so the chain is never without it. Every change
       names a rule by its spec, never by a number someone else's change could shift.
    4. Remove our rules for `pool` that are not wanted; with `remove_stale`, also those for
       other pools and of the first format (OTHER), which are otherwise kept.
    Nothing is touched when everything is in place, so applying again changes nothing.
    """
    run = run or run_command
    try:
        subnet = _network(pool)
        with applier_lock():
            for family, chain, mine in _chains(run, pool):
                command = _command(family)
                rules = _chain(run, chain, family)
                if rules is None:
                    _must(run, [command, "-w", "-N", chain])
                    rules = []
                leading = _leading(rules)
                for rule in mine:
                    copies = rules.count(rule.spec)
                    if copies == 0:
                        _must(run, [command, "-w", "-I", chain, "1", *rule.spec])
                    elif rules[:leading].count(rule.spec) == copies:
                        # Every copy leads, so whichever -D leaves is ahead of anyone else's.
                        _delete_copies(run, chain, rule.spec, copies - 1, family)
                    else:
                        stand_in = _stand_in(rule.spec)
                        _must(run, [command, "-w", "-I", chain, "1", *stand_in])
                        _delete_copies(run, chain, rule.spec, copies, family)
                        _must(run, [command, "-w", "-I", chain, "1", *rule.spec])
                        _must(run, [command, "-w", "-D", chain, *stand_in])
                wanted_specs = {rule.spec for rule in mine}
                for spec in dict.fromkeys(s for s in rules if _is_ours(s) and s not in wanted_specs):
                    if remove_stale or _marked_pool(spec) == subnet:
                        _delete_copies(run, chain, spec, rules.count(spec), family)
    except IsolationUnavailable as exc:
        return IsolationReport(pool, [RuleState(rule, MISSING) for rule in _wanted_or_none(pool)], False, str(exc))
    return check_isolation(pool, run)


def remove_isolation(pool: str, run: Runner | None = None) -> int:
    """Remove every rule of ours for `pool` (uninstalling, or a test's throwaway pool); returns
    how many went. Rules for other pools stay."""
    run = run or run_command
    subnet = _network(pool)
    removed = 0
    with applier_lock():
        for family, chain in ALL_CHAINS:
            rules = _chain(run, chain, family) or []
            for spec in dict.fromkeys(s for s in rules if _marked_pool(s) == subnet):
                _delete_copies(run, chain, spec, rules.count(spec), family)
                removed += rules.count(spec)
    return removed


# -- the platform's edges: settings, start of the processes that run labs, provisioning --------

OPT_OUT_HINT = "or set STACKLAB_LAB_ISOLATION=false if the engine's host firewall is managed elsewhere"
# A worker run as an ordinary user (in the docker group, say, under `make run`): applying the
# rules once as root is not enough, since the worker reads them again before every lab.
NEEDS_ROOT = (
    "the worker itself must read the host firewall (root, or CAP_NET_ADMIN) before every lab it starts: "
    "run the worker as root, or set STACKLAB_LAB_ISOLATION=false knowing that labs can then reach every "
    "service this host binds on all interfaces"
)


def remedy(report: IsolationReport) -> str:
    """What an administrator does about a report that is not enforced."""
    if report.lacks_privilege:
        return NEEDS_ROOT
    return f"run `manage.py lab_isolation` as root, {OPT_OUT_HINT}"


def install_at_start(process: str) -> IsolationReport | None:
    """Apply the rules when a process that runs labs starts; one log line says how it went."""
    from django.conf import settings

    if not settings.LAB_ISOLATION:
        logger.warning(
            "%s: lab isolation is off (STACKLAB_LAB_ISOLATION=false): this host installs no firewall rules "
            "for labs; the engine's host must keep labs off its services itself",
            process,
        )
        return None
    report = apply_isolation(settings.LAB_SUBNET_POOL)
    if report.is_enforced:
        logger.info("%s: lab isolation %s", process, report.summary())
    else:
        logger.error(
            "%s: lab isolation %s. Labs will not start until it is in place: %s",
            process,
            report.summary(),
            remedy(report),
        )
    return report


def keep_lab_isolation() -> IsolationReport | None:
    """Put back whatever rule went missing (a firewall reload, an admin's flush), saying so;
    run by beat every minute, so labs already running are not left open until the next launch."""
    from django.conf import settings

    if not settings.LAB_ISOLATION:
        return None
    report = check_isolation(settings.LAB_SUBNET_POOL)
    if report.is_enforced:
        return report
    logger.warning("lab isolation %s; applying the rules again", report.summary())
    report = apply_isolation(settings.LAB_SUBNET_POOL)
    if not report.is_enforced:
        logger.error("lab isolation %s. Labs will not start until it is in place: %s", report.summary(), remedy(report))
    return report


def ensure_lab_isolation() -> None:
    """Before a lab starts: the rules are in place, put back if they went missing. Raises
    IsolationMissing, which fails the lab with its reason."""
    report = keep_lab_isolation()
    if report is not None and not report.is_enforced:
        refused = "This installation cannot keep labs off its host right now, so the lab was not started"
        if report.lacks_privilege:
            raise IsolationMissing(
                f"{refused}: its worker may not read the host firewall. Run the worker as root, or set "
                "STACKLAB_LAB_ISOLATION=false knowing that labs can then reach this host's services."
            )
        raise IsolationMissing(f"{refused}. An administrator can see why with `manage.py lab_isolation --check`.")
