"""The code's shape, checked: imports point one way, the web process stays light.

Read from the source with `ast` (top-level and in-function imports alike), and
from outside the running processes (/proc/PID/maps), never from what the
modules say of themselves.
"""

import ast
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HEAVY = {"anki", "google", "jwt"}  # deliberately imported where they are used
# In-function imports of anything else, each with its reason.
LAZY_ALLOWED = {
    ("huey_tasks", "worker"): "worker-only (brings anki): the web process imports huey_tasks"
                              " to enqueue, so the worker's start-up hook imports it",
    ("huey_tasks", "ankiconnect"): "worker-only (brings anki), as worker",
    ("cli", "ankiweb"): "worker-only (brings anki): only `login` needs it",
    ("cli", "waitress"): "the web server, only for `serve`: the other commands start without it",
    ("tts", "requests"): "comes with the Google client, needed only where it is used",
    ("ankisync", "metrics"): "only with ANKISYNC_METRICS=on: prometheus_client costs the web"
                             " process a few MB",
    ("notify", "apprise"): "worker and CLI only: huey_tasks (which the web process imports)"
                           " imports notify, and apprise loads dozens of plugins",
}
# sys.modules touched on purpose (never to look a module up), with the reason.
SYS_MODULES_ALLOWED = {
    "auth": "keep_jwt_light() blocks cryptography from loading in the web process (a write)",
}
# `global` statements allowed, with the reason.
GLOBAL_ALLOWED = {}
# Module-level names that functions change, with the reason: the apps and caches.
MUTATED_ALLOWED = {
    ("db", "_local"): "per-thread connection cache, keyed by pid and path (see db.py)",
    ("db", "_groups"): "per-process GroupCommit cache, keyed by pid and path (see db.py)",
    ("ankiconnect.dispatch", "ACTIONS"): "the registry, filled as the action modules load",
    ("huey_tasks", "huey"): "the queue app: init() and the worker's start-up hook give it the"
                            " settings, the Worker and the AnkiConnect server",
}
MUTATORS = {"append", "extend", "insert", "update", "setdefault", "pop", "popitem", "clear",
            "add", "remove", "discard"}
# Extension modules of what the web process must never load: anki's Rust bridge,
# grpc's core, protobuf's C implementation (upb; google.cloud brings protobuf).
HEAVY_LIBRARIES = ("anki/_rsbridge", "grpc/_cython/cygrpc", "google/_upb/_message")


def project_modules():
    """{module name: source path} of the project (the top-level files and packages)."""
    found = {}
    for path in ROOT.glob("*.py"):
        found[path.stem] = path
    for init in ROOT.glob("*/__init__.py"):
        if init.parent.name in ("tests", "bench"):
            continue
        package = init.parent.name
        found[package] = init
        for path in init.parent.glob("*.py"):
            if path.name != "__init__.py":
                found[f"{package}.{path.stem}"] = path
    return found


def imports(name, path, modules):
    """[(imported project module or root of another, whether in a function, line)]."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    in_function = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            in_function.update(id(inner) for inner in ast.walk(node) if inner is not node)
    found = []
    for node in ast.walk(tree):
        lazy = id(node) in in_function
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(filter(None, [*parts, node.module]))
            # `from package import module` imports the module
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target not in modules and "." in target:
                target = target.rpartition(".")[0]
            found.append((target, lazy, node.lineno))
    return found


def graph():
    modules = project_modules()
    return modules, {name: imports(name, path, modules) for name, path in modules.items()}


def cycle(edges):
    """One import cycle as a list of modules, or None."""
    state, stack = {}, []

    def visit(module):
        state[module] = "open"
        stack.append(module)
        for target in edges.get(module, ()):
            if state.get(target) == "open":
                return stack[stack.index(target):] + [target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[module] = "done"
        stack.pop()
        return None

    for module in sorted(edges):
        if module not in state:
            found = visit(module)
            if found:
                return found
    return None


def test_the_import_graph_has_no_cycle():
    modules, found = graph()
    edges = {name: {target for target, _, _ in targets if target in modules and target != name}
             for name, targets in found.items()}
    assert {"ankisync", "huey_tasks", "worker", "ankiconnect", "ankiconnect.server"} <= set(edges)
    assert "worker" in edges["huey_tasks"] and "ankiconnect" in edges["huey_tasks"]
    assert cycle(edges) is None, " -> ".join(cycle(edges))
    # the cycle finder itself finds one, e.g. the one issue 12 removed
    assert cycle({**edges, "worker": edges["worker"] | {"huey_tasks"}}) is not None


def test_imports_in_functions_are_only_of_the_heavy_packages():
    modules, found = graph()
    lazy = {(name, target.split(".")[0] if target not in modules else target, line)
            for name, targets in found.items() for target, in_function, line in targets
            if in_function}
    wrong = sorted(f"{name}.py:{line} imports {target}" for name, target, line in lazy
                   if target.split(".")[0] not in HEAVY and (name, target) not in LAZY_ALLOWED)
    assert not wrong, "import at the top, or list it with its reason in LAZY_ALLOWED"
    unused = set(LAZY_ALLOWED) - {(name, target) for name, target, _ in lazy}
    assert not unused, f"LAZY_ALLOWED lists imports that are gone: {unused}"


# Packages the web process must not load at start: apprise only ever runs in the worker and
# the CLI; prometheus_client only once /metrics is asked for (ANKISYNC_METRICS=on).
NOT_AT_WEB_START = {"apprise", "prometheus_client"}


def test_the_web_process_loads_no_alerts_or_metrics_library_at_start():
    modules, found = graph()
    seen, todo, wrong = set(), ["ankisync"], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target, in_function, line in found[name]:
            if in_function:
                continue
            if target in modules:
                todo.append(target)
            elif target.split(".")[0] in NOT_AT_WEB_START:
                wrong.append(f"{name}.py:{line} imports {target}")
    assert {"huey_tasks", "notify", "cli"} <= seen  # what the web process does import
    assert not wrong, "the web process would load them: import them where they are used"


def uses(tree, test):
    return [node.lineno for node in ast.walk(tree) if test(node)]


def found_in_project(test, allowed):
    """{module: [lines]} where test(node) holds, but for the modules allowed."""
    found = {}
    for name, path in project_modules().items():
        lines = uses(ast.parse(path.read_text(), str(path)), test)
        if lines and name not in allowed:
            found[name] = lines
    return found


def test_no_sys_modules_look_ups():
    peeking = found_in_project(lambda node: isinstance(node, ast.Attribute)
                               and node.attr == "modules" and isinstance(node.value, ast.Name)
                               and node.value.id == "sys", SYS_MODULES_ALLOWED)
    assert not peeking, f"sys.modules used (pass the object instead): {peeking}"


def test_no_module_state_set_by_global():
    globals_ = found_in_project(lambda node: isinstance(node, ast.Global), GLOBAL_ALLOWED)
    assert not globals_, f"module-level state set by `global` (keep it on an object): {globals_}"


def mutated_module_names(tree):
    """{(name, line)} of module-level names that a function changes in place or sets
    attributes or items of (a function's own local of the same name aside)."""
    module_names = {target.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                    if isinstance(target, ast.Name)}
    found = set()
    for function in ast.walk(tree):
        if not isinstance(function, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        local = {node.id for node in ast.walk(function)
                 if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
        local |= {arg.arg for arg in ast.walk(function.args) if isinstance(arg, ast.arg)}
        for node in ast.walk(function):
            if isinstance(node, (ast.Attribute, ast.Subscript)) and isinstance(
                    node.ctx, (ast.Store, ast.Del)):
                base = node.value
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                  and node.func.attr in MUTATORS):
                base = node.func.value
            else:
                continue
            if isinstance(base, ast.Name) and base.id in module_names - local:
                found.add((base.id, node.lineno))
    return found


def test_no_module_level_state_changed_by_functions():
    changed = sorted(f"{name}.py:{line} changes {variable}"
                     for name, path in project_modules().items()
                     for variable, line in mutated_module_names(ast.parse(path.read_text()))
                     if (name, variable) not in MUTATED_ALLOWED)
    assert not changed, "keep the state on the Worker or the app that owns it"


def test_importing_the_modules_and_making_a_worker_writes_nothing(tmp_path):
    """The web process imports huey_tasks to enqueue: importing it (and the worker's
    modules, and making a Worker) must not make the data dir or Huey's tables."""
    data_dir = tmp_path / "data"
    env = {**os.environ, "ANKISYNC_DATA_DIR": str(data_dir)}
    made = subprocess.run(
        [sys.executable, "-c", "import ankiconnect, config, huey_tasks, worker;"
         " print(type(worker.Worker(config.current())).__name__)"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert made.returncode == 0 and made.stdout == "Worker\n", made.stderr
    assert not data_dir.exists(), sorted(data_dir.rglob("*"))


def loaded_libraries(pid):
    with open(f"/proc/{pid}/maps") as maps:
        return {line.split()[-1] for line in maps if len(line.split()) >= 6}


def heavy(libraries):
    return sorted(path for path in libraries if any(part in path for part in HEAVY_LIBRARIES))


def processes(group):
    """{pid: (command line, parent pid)} of the ankisync processes in run.sh's group."""
    found = {}
    for pid in group:
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            parent = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError):
            continue
        found[pid] = ([part.decode() for part in command if part], parent)
    return found


def test_the_web_process_never_loads_anki_google_or_grpc(service):
    """A card made with the Google voice loads all three in the worker; the web process
    that took the card, checked its token and reports its status, holds none of them."""
    status, body = service.post_card()
    assert status == 202, body
    job, _ = service.wait(body["taskId"])
    assert job["status"] == "success", job
    assert service.call("GET", "/api/v1/health")[0] == 200
    running = processes(service.group_alive())
    web = [pid for pid, (command, _) in running.items() if command[-2:] == ["ankisync.py", "serve"]]
    workers = [pid for pid, (command, _) in running.items()
               if command[-2:] == ["ankisync.py", "worker"]]
    assert len(web) == 1 and workers, running
    # the consumer's forked process (its process worker, which made the card): the check
    # sees what it loaded
    forked = [pid for pid in workers if running[pid][1] in workers]
    assert forked, running
    in_worker = [path for pid in forked for path in heavy(loaded_libraries(pid))]
    for part in HEAVY_LIBRARIES:
        assert any(part in path for path in in_worker), (part, in_worker)
    assert heavy(loaded_libraries(web[0])) == [], f"the web process (pid {web[0]}) loaded them"
