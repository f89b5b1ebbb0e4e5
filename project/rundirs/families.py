"""The families of runs, read back from the lineage.json files run dirs keep (project/rundirs/lineage.py).

A node is a run dir: a `resume=full` requeue or restart in the same dir is the same node (counted in `starts`);
a `resume=full` into a new dir is a child marked "continued"; a `reset_optimizer` run is a child marked so; a file
another script wrote is a root whose stored best was computed by another script; a parent that is not found
(moved or deleted, or made before lineage.json existed) is shown as missing. Sweep jobs with the same parent
(or none) hang together as one group.
"""
from dataclasses import dataclass, field
from pathlib import Path

from project import noise
from project.errors import UserError
from project.rundirs.discovery import find_runs, job_order
from project.rundirs.lineage import FILE, FORMAT, read_json


# ------------------------------------------------------------------------------------------ reading: the family

@dataclass
class Node:
    key: str                      # a run dir (resolved), "file:<path>" (another script's file), "missing:<dir>"
    kind: str                     # "run", "foreign", "missing"
    name: str                     # as shown
    data: dict                    # the run's lineage.json; for the others, what a child recorded about them
    dir: Path | None = None       # where the run dir is now
    parent: "Node | None" = None
    children: list = field(default_factory=list)
    vs_parent: dict | None = None
    best_leaf: bool = False

    @property
    def sweep(self):
        return self.data.get("sweep") if self.kind == "run" else None


def find_files(paths: list[str], defaults: bool) -> list[Path]:
    found = []
    for spec in paths:
        path = Path(spec)
        if path.is_file() and path.name == FILE:
            found.append(path)
        elif path.is_dir():
            found += [r / FILE for r in find_runs(path) if (r / FILE).is_file()]
        elif not defaults:
            raise UserError(f"{spec!r} does not exist. Pass run dirs, sweep dirs or folders that hold them "
                            "(default: outputs/ and multirun/).")
    return list(dict.fromkeys(p.resolve() for p in found))


def shown(path) -> str:
    """A path relative to the current directory when it is below it."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def load(paths: list[str], defaults: bool = False) -> list[Node]:
    """Every run found, with its parents (followed outside `paths` where their lineage.json is still there),
    foreign roots and missing parents: the roots of the families, children sorted by when they started."""
    nodes, by_recorded = {}, {}

    def add_run(file: Path) -> Node | None:
        data = read_json(file)
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            return None
        here = file.parent.resolve()
        if str(here) in nodes:
            return nodes[str(here)]
        node = Node(str(here), "run", shown(here), data, dir=here)
        nodes[node.key] = node
        by_recorded.setdefault(data.get("run_dir") or str(here), node)  # a moved tree still finds its parents
        return node

    queue = [n for n in (add_run(f) for f in find_files(paths, defaults)) if n is not None]
    while queue:  # parents outside the given paths, as long as their lineage.json is where a child says
        more = []
        for node in queue:
            parent = node.data.get("parent")
            if parent and not parent.get("foreign") and parent.get("run_dir"):
                if parent["run_dir"] not in by_recorded and parent["run_dir"] not in nodes:
                    file = Path(parent["run_dir"]) / FILE
                    found = add_run(file) if file.is_file() else None
                    if found is not None:
                        more.append(found)
        queue = more

    for node in list(nodes.values()):
        if node.kind != "run" or not node.data.get("parent"):
            continue
        p = node.data["parent"]
        if p.get("foreign"):
            key = f"file:{p['path']}"
            parent = nodes.get(key) or Node(key, "foreign", shown(p["path"]), dict(p))
        else:
            target = p.get("run_dir") or str(Path(p["path"]).parent)
            parent = by_recorded.get(target) or nodes.get(target)
            if parent is None:
                key = f"missing:{target}"
                parent = nodes.get(key) or Node(key, "missing", shown(target), dict(p))
        nodes[parent.key] = parent
        node.parent = parent
        parent.children.append(node)

    for node in nodes.values():
        order = {id(c): child_order(node, c) for c in node.children}  # (a list being sorted looks empty)
        node.children.sort(key=lambda c: order[id(c)])
    roots = [n for n in nodes.values() if n.parent is None]
    roots.sort(key=lambda n: (started(n), n.name))
    for node in nodes.values():
        if node.parent is not None and node.kind == "run":
            node.vs_parent = against_parent(node)
    return roots


def started(node: Node) -> str:
    if node.kind == "run":
        return node.data.get("started") or node.data.get("updated") or ""
    return min((started(c) for c in node.children), default="")


def child_order(parent: Node, child: Node):
    """By start time; the jobs of one sweep together, in job order, where its first job started."""
    sweep = child.sweep
    if sweep:
        first = min(started(c) for c in parent.children if c.sweep == sweep)
        return (first, sweep, job_order(child.name))
    return (started(child), "", job_order(child.name))


def families(roots: list[Node]) -> list[list[Node]]:
    """The families: a root with its descendants; the parentless jobs of one sweep are one family."""
    out, sweeps = [], {}
    for root in roots:
        if root.sweep:
            if root.sweep not in sweeps:
                sweeps[root.sweep] = []
                out.append(sweeps[root.sweep])
            sweeps[root.sweep].append(root)
        else:
            out.append([root])
    for tops in out:
        tops.sort(key=lambda n: job_order(n.name))
    return out


def walk(node: Node):
    yield node
    for child in node.children:
        yield from walk(child)


def against_parent(node: Node) -> dict | None:
    """Did the run beat its parent, and is the difference beyond noise (project/noise.py)? Against the parent's
    weights scored here when the run scored them first (reset_optimizer, a foreign file); else against the best
    the parent had when this run started from it (same metric only); a foreign stored best is never compared."""
    d, p = node.data, node.data["parent"]
    best, higher = d.get("best"), d.get("higher_is_better", True)
    if best is None:
        return None
    parent_spread = node.parent.data.get("spread") if node.parent.kind == "run" else None
    if d.get("start_score") is not None:
        ref, what = d["start_score"], "its starting weights scored here"
    elif not p.get("foreign") and p.get("best_score") is not None and p.get("monitor") == d.get("monitor"):
        ref, what = p["best_score"], f"the parent's best at epoch {p.get('epoch')}"
    else:
        return {"compared": False, "why": "the parent's stored best was computed by another script"
                if p.get("foreign") else "no comparable score of the parent"}
    gain = best - ref if higher else ref - best
    noise_ = noise.within_noise(gain, d.get("spread"), parent_spread)
    spreads = [s for s in (d.get("spread"), parent_spread) if s is not None]
    return {"compared": True, "reference": ref, "what": what, "gain": gain, "beats": gain > 0,
            "noise": None if noise_ is None else "within" if noise_ else "beyond",
            "spread": max(spreads) if spreads else None}


def mark_best_leaves(family: list[Node]) -> Node | None:
    leaves = [n for top in family for n in walk(top)
              if n.kind == "run" and not n.children and n.data.get("best") is not None]
    if not leaves:
        return None
    monitor = leaves[0].data.get("monitor")
    leaves = [n for n in leaves if n.data.get("monitor") == monitor]
    higher = leaves[0].data.get("higher_is_better", True)
    best = (max if higher else min)(leaves, key=lambda n: n.data["best"])
    best.best_leaf = True
    return best


def groups_of(children: list[Node]) -> list[tuple[str | None, list[Node]]]:
    """Consecutive children of one sweep as one group; others alone."""
    out = []
    for child in children:
        if child.sweep and out and out[-1][0] == child.sweep:
            out[-1][1].append(child)
        else:
            out.append((child.sweep, [child]))
    return out

