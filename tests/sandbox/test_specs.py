"""The lab spec loader: the shipped lab is valid, and mistakes are named by file and key."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from sandbox.engine import SHM_BYTES
from sandbox.specs import SHM_SIZE, LabNotFound, LabSpecError, QuestionCheck, load_lab, parse_lab, size_bytes

LABS = Path(__file__).resolve().parents[2] / "labs"


def test_first_lab_loads_with_three_app_replicas() -> None:
    spec = load_lab("scaling-load-balancer").spec
    assert spec.node("app").instances == ["app-1", "app-2", "app-3"]
    assert [node.name for node in spec.start_order()][:2] == ["db", "cache"]
    assert spec.start_order()[-1].name == "traffic"
    assert any(objective.check.while_down == "app" for objective in spec.objectives)


def test_unknown_lab_is_not_found() -> None:
    with pytest.raises(LabNotFound):
        load_lab("no-such-lab")
    with pytest.raises(LabNotFound):
        load_lab("../etc")


@pytest.fixture
def lab_copy(tmp_path: Path) -> Path:
    """A writable copy of the first lab (and the shared images) to break in tests."""
    shutil.copytree(LABS / "images", tmp_path / "images")
    shutil.copytree(LABS / "scaling-load-balancer", tmp_path / "scaling-load-balancer")
    return tmp_path / "scaling-load-balancer" / "lab.yaml"


def rewrite(path: Path, change) -> None:  # noqa: ANN001
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data))


def test_unknown_key_is_named(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d["nodes"][0].update(replica=2))
    with pytest.raises(LabSpecError) as error:
        parse_lab(lab_copy)
    assert "lab.yaml" in str(error.value)
    assert "nodes.0.replica: Extra inputs are not permitted" in str(error.value)


def test_break_naming_an_unknown_fault_is_named(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d.update({"break": "kill-app-9"}))
    with pytest.raises(LabSpecError, match="break: no fault with key 'kill-app-9'"):
        parse_lab(lab_copy)


def test_fault_on_a_missing_node_is_named(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d["faults"][0].update(node="app-9"))
    with pytest.raises(LabSpecError, match=r"lab.yaml:\d+: faults\.0\.node: no node named 'app-9'"):
        parse_lab(lab_copy)


def test_exec_fault_needs_a_command(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d["faults"][2].pop("command"))
    with pytest.raises(LabSpecError, match="faults.2: command is required for action exec"):
        parse_lab(lab_copy)


def test_network_fault_needs_a_command(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d["faults"].insert(0, {**d["faults"][0], "key": "drop-all", "action": "network"}))
    with pytest.raises(LabSpecError, match="faults.0: command is required for action network"):
        parse_lab(lab_copy)


def test_network_fault_needs_the_tools_image(lab_copy: Path) -> None:
    (lab_copy.parent.parent / "images" / "tools" / "Dockerfile").unlink()
    with pytest.raises(
        LabSpecError, match=r"faults\.\d+\.action: a network fault needs a Dockerfile in .*images/tools"
    ):
        parse_lab(lab_copy)


def test_topology_edges_follow_depends_on() -> None:
    edges = load_lab("scaling-load-balancer").spec.edges()
    assert ("traffic", "lb") in edges
    assert {("lb", f"app-{i}") for i in (1, 2, 3)} <= set(edges)
    assert ("app-2", "db") in edges and ("app-2", "cache") in edges


def test_objective_on_an_unknown_group_is_named(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d["objectives"][1]["check"].update(while_down="web"))
    with pytest.raises(LabSpecError, match="while_down: no node 'web'"):
        parse_lab(lab_copy)


def test_build_context_without_dockerfile_is_named(lab_copy: Path) -> None:
    (lab_copy.parent.parent / "images" / "cache" / "Dockerfile").unlink()
    with pytest.raises(LabSpecError, match=r"nodes\.1\.build: no Dockerfile"):
        parse_lab(lab_copy)


def test_privileged_capabilities_are_refused(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d["nodes"][0].update(cap_add=["SYS_ADMIN"]))
    with pytest.raises(LabSpecError, match="capabilities not allowed: SYS_ADMIN"):
        parse_lab(lab_copy)


def test_every_node_writes_only_to_its_roles_paths_and_tmp_by_default() -> None:
    spec = load_lab("cache-aside").spec  # no node of it declares `writable`
    assert {node.name: node.writable_sizes for node in spec.nodes} == {
        "db": {"/tmp": "16m", "/var/lib/postgresql": "64m", "/run/postgresql": "1m", "/etc/postgresql": "1m"},
        "cache": {"/tmp": "16m", "/var/lib/redis": "16m", "/etc/redis": "1m"},
        "app": {"/tmp": "16m", "/var/lib/app": "16m"},
        "lb": {"/tmp": "16m", "/etc/haproxy": "1m", "/run/haproxy": "1m"},
        "traffic": {"/tmp": "16m"},
    }
    assert spec.node("app").writable_bytes == {"/tmp": 16 * 1024**2, "/var/lib/app": 16 * 1024**2}


def set_app(lab_copy: Path, **changes: object) -> None:
    rewrite(lab_copy, lambda d: next(n for n in d["nodes"] if n["name"] == "app").update(changes))


def test_a_spec_adds_resizes_and_drops_writable_paths(lab_copy: Path) -> None:
    set_app(lab_copy, writable={"/var/cache/app": "8m", "/tmp": "4m", "/var/lib/app": None})
    app = parse_lab(lab_copy).spec.node("app")
    assert app.writable_sizes == {"/tmp": "4m", "/var/cache/app": "8m"}


@pytest.mark.parametrize(
    "path",
    ["var/lib/app", "/", "/var/lib/../../etc", "/var/lib/app/", "/proc/x", "/dev", "/.stacklab", "/.stacklab/seed"],
)
def test_writable_path_must_be_absolute_and_harmless(lab_copy: Path, path: str) -> None:
    set_app(lab_copy, writable={path: "16m"})
    with pytest.raises(LabSpecError, match=r"lab.yaml:\d+: nodes\.2\.writable: '.*' (must be an absolute|would hide)"):
        parse_lab(lab_copy)


def test_writable_path_is_plain_characters(lab_copy: Path) -> None:
    set_app(lab_copy, writable={"/var/lib/$(reboot)": "1m"})
    with pytest.raises(LabSpecError, match=r"nodes\.2\.writable: '/var/lib/\$\(reboot\)': only letters, digits"):
        parse_lab(lab_copy)


@pytest.mark.parametrize("size", ["512m", "16", "16 MB", "0m", "512k"])
def test_writable_size_must_be_sane(lab_copy: Path, size: str) -> None:
    set_app(lab_copy, writable={"/var/lib/app": size}, limits={"memory": "1g"})
    with pytest.raises(LabSpecError, match=r"nodes\.2\.writable: /var/lib/app: size must"):
        parse_lab(lab_copy)


def test_writable_paths_must_fit_under_the_memory_limit(lab_copy: Path) -> None:
    set_app(lab_copy, writable={"/var/lib/app": "64m", "/var/cache/app": "8m"})  # + /tmp, /dev/shm: 96m
    with pytest.raises(
        LabSpecError,
        match=r"nodes\.2: writable: the sizes together \(/tmp 16m \+ /var/cache/app 8m \+ /var/lib/app 64m \+ "
        r"/dev/shm 8m\) must stay below limits.memory \(96m\)",
    ):
        parse_lab(lab_copy)


def test_dev_shm_counts_as_the_engine_sizes_it() -> None:
    assert size_bytes(SHM_SIZE) == SHM_BYTES


def test_role_defaults_count_against_a_small_memory_limit(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: next(n for n in d["nodes"] if n["name"] == "db").update(limits={"memory": "64m"}))
    with pytest.raises(LabSpecError, match=r"nodes\.0: writable: the sizes together .* below limits.memory \(64m\)"):
        parse_lab(lab_copy)


def test_nested_writable_paths_are_refused(lab_copy: Path) -> None:
    set_app(lab_copy, writable={"/var/lib/app/cache": "4m"})
    with pytest.raises(LabSpecError, match=r"nodes\.2: writable: /var/lib/app/cache is inside /var/lib/app"):
        parse_lab(lab_copy)


def test_the_old_scratch_key_says_what_it_became(lab_copy: Path) -> None:
    set_app(lab_copy, scratch={"/var/lib/app": "16m"})
    with pytest.raises(LabSpecError, match=r"nodes\.2: scratch: renamed to writable"):
        parse_lab(lab_copy)


def test_not_yaml_is_named(lab_copy: Path) -> None:
    lab_copy.write_text("nodes: [unclosed")
    with pytest.raises(LabSpecError, match="not valid YAML"):
        parse_lab(lab_copy)


def edit(path: Path, old: str, new: str) -> int:
    """Replace the one `old` in the spec text with `new`; the line (1-based) where `new` starts."""
    text = path.read_text()
    assert text.count(old) == 1
    path.write_text(text.replace(old, new))
    return text[: text.index(old)].count("\n") + 1


def problems(path: Path) -> list[str]:
    with pytest.raises(LabSpecError) as error:
        parse_lab(path)
    return str(error.value).splitlines()


def test_unknown_key_names_its_line(lab_copy: Path) -> None:
    line = edit(lab_copy, "    replicas: 3\n", "    replicas: 3\n    replica: 2\n") + 1
    assert problems(lab_copy) == [
        f"{lab_copy}: invalid lab spec (1 problem)",
        f"{lab_copy}:{line}: nodes.2.replica: Extra inputs are not permitted",
    ]


def test_fault_on_a_missing_node_names_the_line_of_its_node_key(lab_copy: Path) -> None:
    line = edit(lab_copy, "    node: app-2\n", "    node: app-9\n")
    assert f"{lab_copy}:{line}: faults.0.node: no node named 'app-9'" in problems(lab_copy)


def test_unknown_break_names_the_line_of_break(lab_copy: Path) -> None:
    line = edit(lab_copy, "break: kill-app-2\n", "break: kill-app-9\n")
    assert f"{lab_copy}:{line}: break: no fault with key 'kill-app-9'" in problems(lab_copy)


def test_yaml_syntax_error_names_its_line(lab_copy: Path) -> None:
    line = edit(lab_copy, "title: Load balancer", "title: Load: balancer")
    with pytest.raises(LabSpecError, match=rf"lab.yaml:{line}: not valid YAML: mapping values are not allowed"):
        parse_lab(lab_copy)


def test_missing_key_names_the_line_of_the_mapping_that_lacks_it(lab_copy: Path) -> None:
    line = edit(lab_copy, "solution:\n  node: lb\n", "solution:\n")
    assert f"{lab_copy}:{line}: solution.node: Field required" in problems(lab_copy)


def test_every_problem_is_reported_at_once_in_file_order(lab_copy: Path) -> None:
    break_line = edit(lab_copy, "break: kill-app-2\n", "break: kill-app-9\n")
    build_line = edit(lab_copy, "    build: ../images/cache\n", "    build: ../images/nowhere\n")
    nowhere = (lab_copy.parent.parent / "images" / "nowhere").resolve()
    assert problems(lab_copy) == [
        f"{lab_copy}: invalid lab spec (2 problems)",
        f"{lab_copy}:{build_line}: nodes.1.build: no Dockerfile in {nowhere}",
        f"{lab_copy}:{break_line}: break: no fault with key 'kill-app-9'",
    ]


def test_pydantic_problems_are_all_reported_with_their_lines(lab_copy: Path) -> None:
    cpus_line = edit(lab_copy, "limits: {memory: 256m, cpus: 0.5,", "limits: {memory: 256m, cpus: 9,")
    window_line = edit(lab_copy, "      window: 30\n", "      window: 1\n")
    lines = problems(lab_copy)
    assert lines[0].endswith("invalid lab spec (2 problems)")
    assert lines[1].startswith(f"{lab_copy}:{cpus_line}: nodes.0.limits.cpus: ")
    assert lines[2].startswith(f"{lab_copy}:{window_line}: objectives.1.check.metric.window: ")


def test_a_depends_on_cycle_is_caught_before_anything_starts(lab_copy: Path) -> None:
    rewrite(lab_copy, lambda d: d["nodes"][0].update(depends_on=["lb"]))  # db waits for lb, which waits for db
    with pytest.raises(
        LabSpecError, match=r"nodes\.0\.depends_on: depends_on has a cycle: db, app, lb, traffic can never start"
    ):
        parse_lab(lab_copy)


# -- check kinds beyond metric ----------------------------------------------------------------


def add_objective(path: Path, text: str) -> int:
    """Append an objective (YAML text of one list item) to the spec; the line where it starts."""
    return edit(path, "\nhints:\n", "\n" + text + "\nhints:\n") + 1


def test_http_command_and_question_checks_load(lab_copy: Path) -> None:
    (lab_copy.parent / "check-config.sh").write_text("haproxy -c -f /etc/haproxy/haproxy.cfg\n")
    add_objective(
        lab_copy,
        """  - key: served
    title: The balancer answers
    check: {kind: http, node: traffic, url: "http://lb:8080/", headers: {X-Replica: "^app-"}}
  - key: config-valid
    title: The config is valid
    check: {kind: command, node: lb, script: check-config.sh, output: "valid"}
  - key: why
    title: Why did requests fail?
    check:
      kind: question
      prompt: Where did the failed requests go?
      choices: [To app-2, To the cache]
      answer: To app-2
""",
    )
    spec = parse_lab(lab_copy).spec
    kinds = {objective.key: objective.check.kind for objective in spec.objectives}
    assert kinds == {
        "traffic-flows": "metric",
        "survives-replica-loss": "metric",
        "health-checked": "command",
        "why-it-failed": "question",
        "served": "http",
        "config-valid": "command",
        "why": "question",
    }
    http = spec.objective("served").check
    assert (http.method, http.status, http.passes) == ("GET", 200, 1)
    assert spec.objective("why").is_question and not spec.objective("why").is_probe


def test_http_check_from_an_unknown_node_names_its_line(lab_copy: Path) -> None:
    line = add_objective(
        lab_copy,
        """  - key: served
    title: The balancer answers
    check:
      kind: http
      node: app-9
      url: http://lb:8080/
""",
    )
    assert f"{lab_copy}:{line + 4}: objectives.4.check.node: no node named 'app-9'" in problems(lab_copy)


def test_http_check_needs_an_http_url(lab_copy: Path) -> None:
    line = add_objective(
        lab_copy,
        """  - key: served
    title: The balancer answers
    check:
      kind: http
      node: traffic
      url: lb:8080
""",
    )
    assert problems(lab_copy)[1].startswith(f"{lab_copy}:{line + 5}: objectives.4.check.http.url: String should match")


def test_a_bad_regular_expression_is_named(lab_copy: Path) -> None:
    line = add_objective(
        lab_copy,
        """  - key: served
    title: The balancer answers
    check:
      kind: http
      node: traffic
      url: http://lb:8080/
      body: "replica (app"
""",
    )
    assert problems(lab_copy)[1].startswith(
        f"{lab_copy}:{line + 6}: objectives.4.check.http.body: not a valid regular expression (missing )"
    )


def test_command_check_takes_a_command_or_a_script_not_both(lab_copy: Path) -> None:
    line = add_objective(
        lab_copy,
        """  - key: config-valid
    title: The config is valid
    check:
      kind: command
      node: lb
      command: [haproxy, -c, -f, /etc/haproxy/haproxy.cfg]
      script: solve.sh
      exit_code: 0
""",
    )
    assert f"{lab_copy}:{line + 5}: objectives.4.check.command: give either command or script" in problems(lab_copy)


def test_command_check_script_must_exist(lab_copy: Path) -> None:
    line = add_objective(
        lab_copy,
        """  - key: config-valid
    title: The config is valid
    check: {kind: command, node: lb, script: nowhere.sh}
""",
    )
    assert f"{lab_copy}:{line + 2}: objectives.4.check.script: no file 'nowhere.sh'" in problems(lab_copy)


def test_question_answer_must_be_one_of_its_choices(lab_copy: Path) -> None:
    line = add_objective(
        lab_copy,
        """  - key: why
    title: Why?
    check:
      kind: question
      prompt: Where did the failed requests go?
      choices: [To app-2, To the cache]
      answer: To app-3
""",
    )
    assert f"{lab_copy}:{line + 2}: objectives.4.check.question: answer must be one of the choices" in problems(
        lab_copy
    )


def test_question_cannot_be_met_at_start(lab_copy: Path) -> None:
    line = add_objective(
        lab_copy,
        """  - key: why
    title: Why?
    at_start: met
    check: {kind: question, prompt: "Which keyword turns on health checks?", answer: check}
""",
    )
    assert f"{lab_copy}:{line}: objectives.4: at_start: a question is unanswered at the start (unmet)" in problems(
        lab_copy
    )


def test_free_text_answers_are_compared_loosely_and_by_pattern() -> None:
    check = QuestionCheck(
        kind="question",
        prompt="Which keyword?",
        answer="option httpchk",
        accept=[r"(option\s+)?httpchk( GET /healthz)?"],
    )
    assert check.is_right("  Option   HTTPCHK ")
    assert check.is_right("httpchk GET /healthz")
    assert not check.is_right("check")
    assert not check.is_right("httpchk; rm -rf /")


# -- images, files and setup scripts ------------------------------------------------------------


def test_a_node_names_an_image_or_a_build_context_not_both(lab_copy: Path) -> None:
    line = edit(lab_copy, "    build: ../images/cache\n", "    build: ../images/cache\n    image: redis:7\n")
    assert f"{lab_copy}:{line - 2}: nodes.1: give either build or image" in problems(lab_copy)


def test_a_node_may_run_a_named_image_with_files_copied_in(lab_copy: Path) -> None:
    (lab_copy.parent / "redis.conf").write_text("maxmemory 32mb\n")
    edit(
        lab_copy,
        "    build: ../images/cache\n",
        "    image: debian:bookworm-slim\n"
        "    files:\n      - {path: /etc/redis/redis.conf, source: redis.conf, mode: '0600'}\n",
    )
    node = parse_lab(lab_copy).spec.node("cache")
    assert (node.image, node.build) == ("debian:bookworm-slim", None)
    assert [(f.path, f.source, f.mode_bits) for f in node.files] == [("/etc/redis/redis.conf", "redis.conf", 0o600)]


@pytest.mark.parametrize(
    ("file", "message"),
    [
        ("{path: /etc/x.conf, source: nowhere.conf}", "nodes.1.files.0.source: no file 'nowhere.conf'"),
        ("{path: /etc/x.conf, source: ../../etc/passwd}", "files.0.source: '../../etc/passwd' must stay inside"),
        ("{path: etc/x.conf, source: solve.sh}", "nodes.1.files.0.path: 'etc/x.conf' must be an absolute"),
        ("{path: /proc/x, source: solve.sh}", "nodes.1.files.0.path: '/proc/x' would hide /proc"),
        ("{path: /etc/x.conf, source: solve.sh, mode: '999'}", "nodes.1.files.0.mode: String should match pattern"),
    ],
)
def test_a_bad_file_is_named(lab_copy: Path, file: str, message: str) -> None:
    edit(lab_copy, "    build: ../images/cache\n", f"    build: ../images/cache\n    files: [{file}]\n")
    assert any(message in line for line in problems(lab_copy)), problems(lab_copy)


def test_setup_scripts_must_exist_and_run_in_a_known_node(lab_copy: Path) -> None:
    (lab_copy.parent / "seed.sh").write_text("psql -c 'select 1'\n")
    text = lab_copy.read_text() + "\nsetup:\n  - {node: db, script: seed.sh, user: postgres}\n"
    lab_copy.write_text(text)
    assert parse_lab(lab_copy).spec.setup[0].script == "seed.sh"
    lab_copy.write_text(text.replace("{node: db, script: seed.sh", "{node: app, script: missing.sh"))
    lines = problems(lab_copy)
    assert lines[1].endswith("setup.0.node: no node named 'app'")
    assert lines[2].endswith("setup.0.script: no file 'missing.sh'")


@pytest.mark.parametrize(
    ("check", "message"),
    [
        ("{kind: http, node: traffic, url: 'http://lb:8080/', method: HEAD, body: x}", "a HEAD answer has no body"),
        ("{kind: http, node: traffic, url: 'http://lb:8080/', data: x}", "data: a GET request sends no body"),
        ("{kind: http, node: traffic, url: 'http://lb:8080/', status: 100}", "greater than or equal to 200"),
        ("{kind: http, node: traffic, url: 'http://lb:8080/', headers: {'Bad Header:': x}}", "String should match"),
    ],
)
def test_http_checks_that_could_never_pass_are_refused(lab_copy: Path, check: str, message: str) -> None:
    add_objective(lab_copy, f"  - key: served\n    title: Served\n    check: {check}\n")
    assert any(message in line for line in problems(lab_copy)), problems(lab_copy)


def test_a_file_may_go_under_a_writable_path_but_not_replace_one(lab_copy: Path) -> None:
    writable = '    writable: {"/var/lib/app": "16m"}\n'
    edit(lab_copy, writable, writable + "    files: [{path: /var/lib/app/seed.txt, source: solve.sh}]\n")
    assert [file.path for file in parse_lab(lab_copy).spec.node("app").files] == ["/var/lib/app/seed.txt"]
    lab_copy.write_text(lab_copy.read_text().replace("/var/lib/app/seed.txt", "/var/lib/app"))
    message = "files: /var/lib/app is a writable path (a directory), not a file"
    assert any(message in line for line in problems(lab_copy)), problems(lab_copy)


def test_folded_choices_are_trimmed_so_they_can_be_picked(lab_copy: Path) -> None:
    add_objective(
        lab_copy,
        """  - key: why
    title: Why?
    check:
      kind: question
      prompt: Which?
      choices:
        - >
          The first choice,
          folded over two lines
        - Another
      answer: >
        The first choice,
        folded over two lines
""",
    )
    check = parse_lab(lab_copy).spec.objective("why").check
    assert check.choices[0] == check.answer == "The first choice, folded over two lines"


def test_a_nested_key_error_names_its_own_line_even_beside_a_same_named_key(lab_copy: Path) -> None:
    # The lb node has a `health.command`; giving the node a `command` too must not pull the
    # error of `health.command` up to the node's own `command` line.
    edit(lab_copy, "    depends_on: [app]\n", "    depends_on: [app]\n    command: [haproxy]\n")
    line = edit(lab_copy, '      command: ["curl", "-fsS"', '      command: []\n      x_command: ["curl", "-fsS"')
    lines = problems(lab_copy)
    assert any(entry.startswith(f"{lab_copy}:{line}: nodes.3.health.command: ") for entry in lines), lines
