"""lineage [PATH ...]: the family of a run, from the lineage.json every run dir keeps.

    project-lineage                                   # outputs/ and multirun/ under the current directory
    project-lineage outputs/2026-11-27 multirun/2026-11-27/12-00-00 [--out lineage.png] [--json]

Each run dir has a small lineage.json, rewritten with its checkpoints (train.py's save(), through `saved()`
below): its parent (the checkpoint it continued, that run's dir, the mode), the config values it changed, its
best score and the spread of its last 5 validations (project/noise.py), how many times it was started in that
dir, its sweep and tags. Drawing a family reads these files only, never a checkpoint.

A node is a run dir: a `resume=full` requeue or restart in the same dir is the same node (counted in `starts`);
a `resume=full` into a new dir is a child marked "continued"; a `reset_optimizer` run is a child marked so; a file
another script wrote is a root whose stored best was computed by another script; a parent that is not found
(moved or deleted, or made before lineage.json existed) is shown as missing. Sweep jobs with the same parent
(or none) hang together as one group. Prints every family as a text tree and draws them all into one PNG.
"""
import argparse
import json
import math
import os
import statistics
import sys
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from project import noise
from project.errors import UserError
from project.loggers import read_rows
from project.rundirs.discovery import find_runs

FORMAT = "project-lineage-v1"
FILE = "lineage.json"
EDGE = {"full": "continued", "reset_optimizer": "reset_optimizer"}  # a parent entry's mode -> the edge's name


# ---------------------------------------------------------------------------------------------- writing (train.py)

def origin(lineage: list, *, parent: dict | None = None, foreign: bool | None = None, sweep: str | None = None,
           overrides=(), tags=(), parent_artifact: str | None = None) -> dict:
    """What a run dir comes from, fixed when it starts: its parent (the last of its checkpoint `lineage` entries),
    the mode, the changed values, its sweep, overrides and tags.

    `parent`: the parent checkpoint's contents when known (its `run_dir` names the parent run, wherever the file
    was copied to); `foreign`: the parent file was written by another script."""
    entry = lineage[-1] if lineage else None
    if entry is None:
        return {"mode": "new", "parent": None, "changed": {}, "sweep": sweep, "overrides": list(overrides),
                "tags": list(tags)}
    path = Path(entry["path"])
    if foreign is None:  # a file of ours always records the metric it monitors; another script's has none
        foreign = entry.get("monitor") is None
    if foreign:
        run_dir = None
    elif parent is not None and parent.get("run_dir"):
        run_dir = str(Path(parent["run_dir"]).resolve())
    else:
        run_dir = str(path.parent.parent) if path.parent.name == "checkpoints" else None
    return {
        "mode": EDGE.get(entry["mode"], entry["mode"]),
        "parent": {"path": str(path), "run_dir": run_dir, "foreign": bool(foreign), "mode": entry["mode"],
                   "epoch": entry.get("epoch"), "best_score": entry.get("best_score"),
                   "monitor": entry.get("monitor"), "best_name": (parent or {}).get("best_name"),
                   "sha256": entry.get("sha256"), "artifact": parent_artifact},
        "changed": {k: list(v) for k, v in (entry.get("changed") or {}).items()},
        "sweep": sweep, "overrides": list(overrides), "tags": list(tags)}


def describe(ckpt: dict, run_dir: Path, origin_: dict, status: str, higher_is_better: bool | None = None) -> dict:
    """lineage.json's content: `origin_` and what the checkpoint dict `ckpt` (as save() builds it) says now, with
    the spread of the last validations from the run dir's metrics.csv and the starts from its environment.json."""
    run_dir = Path(run_dir)
    monitor = ckpt.get("monitor")
    rows = read_rows(run_dir / "metrics.csv")
    scores = noise.last_scores(r.get(f"val_{monitor}") for r in rows if r.get("phase") != "start")
    starts = read_json(run_dir / "environment.json") or []
    config = ckpt.get("config") or {}
    logger = config.get("logger") or {}
    run_id = (ckpt.get("logger") or {}).get("wandb_run_id")
    start = ckpt.get("start_score") or {}
    best = ckpt.get("best_score")
    return {
        "format": FORMAT, "run_dir": str(run_dir.resolve()), **origin_,
        "monitor": monitor,
        "higher_is_better": (not str(monitor).endswith("loss")) if higher_is_better is None else higher_is_better,
        "best": None if best is None or best != best else float(best), "best_epoch": ckpt.get("best_epoch"),
        "epoch": ckpt.get("epoch"), "max_epochs": (config.get("trainer") or {}).get("max_epochs"),
        "spread": noise.spread(scores), "last_mean": statistics.fmean(scores) if scores else None,
        "last_n": len(scores), "start_score": start.get("score"),
        "starts": len(starts) if isinstance(starts, list) else 1,
        "started": starts[0].get("time") if isinstance(starts, list) and starts else None,
        "status": status,
        "wandb": {"run_id": run_id, "artifact": f"model-{run_id}" if logger.get("log_checkpoints") else None}
        if run_id and "Wandb" in str(logger.get("_target_", "")) else None,
        "updated": datetime.now().isoformat(timespec="seconds")}


def write(run_dir: Path, data: dict) -> None:
    """lineage.json, atomically (temp file, rename): a kill leaves the previous one."""
    path = Path(run_dir) / FILE
    tmp = path.with_name(f".{FILE}.tmp")
    try:
        tmp.write_text(json.dumps(data, indent=1, default=str))
        os.replace(tmp, path)
    except OSError as e:  # a full disk or a read-only mount: said as for checkpoints (project/rundir.py)
        from project.rundirs.lock import disk_error

        tmp.unlink(missing_ok=True)  # a partial temp file must not keep holding the space
        error = disk_error(e, path)
        if error is None:
            raise
        raise error from None


def begin(run, plan, job: dict) -> dict | None:
    """At the start of training (rank 0): the run's origin. A run continuing its own dir (a requeue, a restart)
    keeps what its lineage.json says; otherwise the plan's checkpoint is the parent."""
    from project import distributed

    if not distributed.current().main:
        return None
    progress, cfg = run.state["progress"], run.cfg
    if plan is not None and plan.is_own:
        old = read_json(run.run_dir / FILE)
        if isinstance(old, dict) and old.get("format") == FORMAT:
            return {k: old.get(k) for k in ("mode", "parent", "changed", "sweep", "overrides", "tags")}
    fresh = plan is not None and not plan.is_own
    return origin(progress.lineage, parent=plan.checkpoint if fresh else None, foreign=plan.foreign if fresh else None,
                  sweep=(job or {}).get("sweep_dir"), overrides=run.overrides, tags=user_tags(cfg),
                  parent_artifact=parent_artifact(plan.checkpoint, plan.path) if fresh else None)


def saved(run, ckpt: dict, files: list[str]) -> None:
    """Called by save() on rank 0 before the write starts (the previous write is on disk): rewrite lineage.json,
    and hand the tracker the checkpoints to log (logger.log_checkpoints)."""
    if getattr(run, "family", None) is None:
        return
    if "final_model.pth" in files:
        status = "early stopped" if ckpt.get("early_stopping", {}).get("stopped") else "done"
    elif run.stop is not None and run.stop.caught and files == ["last.pth"]:
        status = "interrupted"
    else:
        status = "running"
    write(run.run_dir, describe(ckpt, run.run_dir, run.family, status, run.final.higher_is_better))
    run.state["tracker"].checkpoint_saved([run.ckpt_dir / f for f in files], {
        "epoch": ckpt.get("epoch"), "monitor": ckpt.get("monitor"), "best_score": ckpt.get("best_score"),
        "best_epoch": ckpt.get("best_epoch")})


def user_tags(cfg) -> list[str]:
    """The top-level `tags=[...]` typed or preset for this run."""
    return [str(t) for t in (cfg.get("tags") or [])]


def tags(cfg, schedule: list) -> list[str]:
    """What W&B gets: the user's tags, then the framework's (the phase names and the resume mode)."""
    return list(dict.fromkeys([*user_tags(cfg), *(p["name"] for p in schedule), str(cfg.resume.mode)]))


def parent_artifact(saved: dict, path) -> str | None:
    """The W&B model artifact the parent checkpoint was logged as (`model-<run id>:best` for best_model.pth,
    `:latest` otherwise); None when the parent did not log its checkpoints to W&B."""
    logger = ((saved or {}).get("config") or {}).get("logger") or {}
    run_id = ((saved or {}).get("logger") or {}).get("wandb_run_id")
    if not run_id or not logger.get("log_checkpoints") or "Wandb" not in str(logger.get("_target_", "")):
        return None
    return f"model-{run_id}:{'best' if Path(path).name == 'best_model.pth' else 'latest'}"


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


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
            found += sorted(r / FILE for r in find_runs(path) if (r / FILE).is_file())
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


def job_order(name: str):
    return [(0, int(p), "") if p.isdigit() else (1, 0, p) for p in Path(name).parts]


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


# --------------------------------------------------------------------------------------------- text and JSON

def fmt(value, digits=4) -> str:
    return "-" if value is None or isinstance(value, float) and math.isnan(value) else f"{value:.{digits}f}"


def value(v) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


# labels and where a run is logged or computed, not what it trains
UNSHOWN = ("tags", "name", "trainer.device", "trainer.num_threads")


def changed_shown(d: dict) -> dict:
    """The changed values worth showing: not labels or logging (UNSHOWN, logger.*), and not a value that only
    follows a typed one (scheduler.max_epochs: ${trainer.max_epochs} changes with trainer.max_epochs)."""
    changed = {k: v for k, v in (d.get("changed") or {}).items()
               if k not in UNSHOWN and not k.startswith("logger.")}
    typed = {o.split("=", 1)[0].lstrip("+~") for o in d.get("overrides") or []}
    typed_pairs = [tuple(map(repr, v)) for k, v in changed.items() if k in typed]
    return {k: v for k, v in changed.items() if k in typed or tuple(map(repr, v)) not in typed_pairs}


def changed_text(d: dict, limit: int | None = None) -> list[str]:
    items = [f"{k} {value(a)} -> {value(b)}" for k, (a, b) in changed_shown(d).items()]
    if limit is not None and len(items) > limit:
        items = items[:limit] + [f"+{len(items) - limit} more"]
    return items


def score_text(d: dict) -> str:
    best = f"best {d.get('monitor')} {fmt(d.get('best'))}"
    if d.get("spread") is not None:
        best += f" +- {fmt(d['spread'])}"
    return best


def status_text(d: dict) -> str:
    at = (f"epoch {d.get('best_epoch')} of {d.get('epoch')}" if d.get("start_score") is None or d.get("best_epoch")
          else f"its starting weights, kept through {d.get('epoch')} epochs")
    status = d.get("status")
    if status in ("done", "early stopped"):
        return f"{at}, {status}"
    return f"{at}, {status if status == 'interrupted' else 'unfinished'} at {d.get('epoch')}/{d.get('max_epochs')}"


def verdict_text(v: dict | None, short: bool = False) -> str:
    if not v:
        return ""
    if not v["compared"]:
        return "not compared with the parent" if short else f"not compared with the parent: {v['why']}"
    noise_ = f"{v['noise']} noise" if v["noise"] else "spread unknown"
    if short:
        return f"{'beats' if v['beats'] else 'does not beat'} parent {v['gain']:+.4f} ({noise_})"
    spread = f": spread {fmt(v['spread'])}" if v["spread"] is not None else ""
    return (f"{'beats' if v['beats'] else 'does not beat'} {v['what']} ({fmt(v['reference'])}): "
            f"{v['gain']:+.4f} ({noise_}{spread})")


def node_lines(node: Node) -> list[str]:
    """The node's line in the tree, then its detail lines (changed values, the verdict against the parent)."""
    d = node.data
    if node.kind == "foreign":
        stored = f"stored {d.get('best_name') or 'best'} {fmt(d.get('best_score'))}" \
            if d.get("best_score") is not None else "no stored best"
        return [f"{node.name}  [file of another script] {stored} (computed by another script)"]
    if node.kind == "missing":
        kids = len(node.children)
        there = Path(node.key.split(":", 1)[1]).is_dir()
        why = "it has no lineage.json (made before this version)" if there else "moved or deleted"
        return [f"{node.name}  [missing parent: {why}] best {fmt(d.get('best_score'))} at epoch {d.get('epoch')} "
                f"when {kids} run{'s' * (kids != 1)} continued from its {Path(d['path']).name}"]
    head = f"{node.name}  [{d.get('mode')}] {score_text(d)} ({status_text(d)})"
    if d.get("starts", 1) > 1:
        head += f", {d['starts']} starts"
    if d.get("tags"):
        head += f", tags {','.join(d['tags'])}"
    if node.best_leaf:
        head += "  <- best leaf"
    details = []
    if d.get("run_dir") and node.dir is not None and Path(d["run_dir"]) != node.dir:
        details.append(f"moved here from {d['run_dir']}")
    if node.parent is not None:
        changed = changed_text(d)
        details.append("changed " + ", ".join(changed) if changed else
                       "no config to compare with (another script's file)" if node.parent.kind == "foreign" else
                       "no config value changed")
        details.append(verdict_text(node.vs_parent))
    return [head] + [x for x in details if x]


def groups_of(children: list[Node]) -> list[tuple[str | None, list[Node]]]:
    """Consecutive children of one sweep as one group; others alone."""
    out = []
    for child in children:
        if child.sweep and out and out[-1][0] == child.sweep:
            out[-1][1].append(child)
        else:
            out.append((child.sweep, [child]))
    return out


def jobs(n: int) -> str:
    return f"{n} job{'s' * (n != 1)}"


def text_tree(family: list[Node]) -> list[str]:
    lines = []

    def branch(node: Node, prefix: str, last: bool, top: bool) -> None:
        head, *details = node_lines(node)
        lines.append(head if top else prefix + ("└── " if last else "├── ") + head)
        below = prefix + ("" if top else "    " if last else "│   ")
        lines.extend(below + ("│   " if node.children else "    ") + "  " + x for x in details)
        grouped = groups_of(node.children)
        for i, (sweep, members) in enumerate(grouped):
            end = i == len(grouped) - 1
            if sweep:
                lines.append(below + ("└── " if end else "├── ") + f"sweep {shown(sweep)} ({jobs(len(members))})")
                inner = below + ("    " if end else "│   ")
                for j, m in enumerate(members):
                    branch(m, inner, j == len(members) - 1, False)
            else:
                branch(members[0], below, end, False)

    if len(family) > 1 or family[0].sweep:
        lines.append(f"sweep {shown(family[0].sweep)} ({jobs(len(family))}, no parent)")
        for j, top in enumerate(family):
            branch(top, "", j == len(family) - 1, False)
    else:
        branch(family[0], "", True, True)
    return lines


def as_json(family: list[Node]) -> dict:
    nodes, edges, groups = [], [], []
    for top in family:
        for n in walk(top):
            d = n.data
            nodes.append({"name": n.name, "kind": n.kind, "mode": d.get("mode") if n.kind == "run" else n.kind,
                          "dir": str(n.dir) if n.dir else None, "starts": d.get("starts"),
                          "best": d.get("best") if n.kind == "run" else d.get("best_score"),
                          "spread": d.get("spread"), "monitor": d.get("monitor"), "best_epoch": d.get("best_epoch"),
                          "epoch": d.get("epoch"), "status": d.get("status"), "changed": d.get("changed"),
                          "sweep": n.sweep, "tags": d.get("tags"), "vs_parent": n.vs_parent,
                          "best_leaf": n.best_leaf})
            if n.parent is not None:
                edges.append({"from": n.parent.name, "to": n.name, "mode": d.get("mode")})
            for sweep, members in groups_of(n.children):
                if sweep:
                    groups.append({"sweep": shown(sweep), "parent": n.name, "jobs": [m.name for m in members]})
    if len(family) > 1 or family[0].sweep:
        groups.insert(0, {"sweep": shown(family[0].sweep), "parent": None, "jobs": [t.name for t in family]})
    return {"nodes": nodes, "edges": edges, "groups": groups}


# ---------------------------------------------------------------------------------------------------- the PNG

COLORS = {"run": "#dbe9f6", "new": "#dbe9f6", "continued": "#dff0d8", "reset_optimizer": "#fcf3cf",
          "foreign": "#eeeeee", "missing": "#ffffff"}


def box_text(node: Node) -> str:
    d = node.data
    if node.kind == "foreign":
        stored = f"stored best {fmt(d.get('best_score'))}" if d.get("best_score") is not None else "no stored best"
        return f"{short(node.name)}\nfile of another script\n{stored}\n(computed by another script)"
    if node.kind == "missing":
        return f"{short(node.name)}\nmissing parent\n(moved or deleted)\nbest then {fmt(d.get('best_score'))}"
    lines = [short(node.name) + (f"  ({d['starts']} starts)" if d.get("starts", 1) > 1 else ""),
             f"{fmt(d.get('best'))} ± {fmt(d.get('spread'))}  ep {d.get('best_epoch')}/{d.get('epoch')}"
             + ("" if d.get("status") in ("done", "early stopped") else f" {d.get('status')}")]
    if node.parent is not None:
        lines += changed_text(d, limit=3)
        lines.append(verdict_text(node.vs_parent, short=True))
    if node.best_leaf:
        lines.append("★ best leaf")
    return "\n".join(line for line in lines if line)


def short(name: str) -> str:
    parts = Path(name).parts
    return str(Path(*parts[-2:])) if len(parts) > 2 else name


def layout(family: list[Node], x0: float) -> tuple[dict, float]:
    """Hand layout: leaves in tree order on consecutive slots, a parent centred over its children, one row per
    generation. Returns ({node key: (x, depth)}, the next free slot)."""
    pos, slot = {}, [x0]

    def place(node: Node, depth: int) -> float:
        if not node.children:
            x = slot[0]
            slot[0] += 1
        else:
            xs = [place(c, depth + 1) for c in node.children]
            x = (xs[0] + xs[-1]) / 2
        pos[node.key] = (x, depth)
        return x

    depth = 1 if (len(family) > 1 or family[0].sweep) else 0
    for top in family:
        place(top, depth)
    return pos, slot[0]


def draw(fams: list[list[Node]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, Patch

    pos, slot = {}, 0.0
    for family in fams:
        p, slot = layout(family, slot)
        pos.update(p)
        slot += 0.5  # a gap between families
    width = max(slot - 0.5, 1)
    depth = max(d for _, d in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(min(max(2.8 * width + 0.6, 8), 80), 1.75 * depth + 1.1))
    ax.set_xlim(-0.55, width - 0.45)
    ax.set_ylim(-depth + 0.45, 0.55)
    ax.axis("off")
    nodes = [n for family in fams for top in family for n in walk(top)]

    def group_box(members: list[Node], label: str) -> None:
        xs = [pos[m.key][0] for m in members]
        y = -pos[members[0].key][1]
        ax.add_patch(FancyBboxPatch((min(xs) - 0.47, y - 0.44), max(xs) - min(xs) + 0.94, 0.86,
                                    boxstyle="round,pad=0.02", fc="#f4f0fa", ec="#8e7cc3", lw=1, ls="--", zorder=0))
        ax.text(min(xs) - 0.45, y + 0.4, label, fontsize=6.5, color="#5b4a91", va="top", ha="left", zorder=1)

    boxes = {}
    for family in fams:
        if len(family) > 1 or family[0].sweep:  # a sweep without a parent: its own box on top, the jobs below
            group_box(family, f"sweep {short(shown(family[0].sweep))}")
            xs = [pos[t.key][0] for t in family]
            head = ax.text((min(xs) + max(xs)) / 2, 0, f"sweep {shown(family[0].sweep)}\n({jobs(len(family))}, no "
                           "parent)", ha="center", va="center", fontsize=7, zorder=3,
                           bbox=dict(boxstyle="round,pad=0.4", fc="#f4f0fa", ec="#8e7cc3"))
            for t in family:
                boxes.setdefault(("sweep", t.key), head)
    for n in nodes:
        for sweep, members in groups_of(n.children):
            if sweep:
                group_box(members, f"sweep {short(shown(sweep))} ({jobs(len(members))})")
    for n in nodes:
        x, d = pos[n.key]
        mode = n.data.get("mode") if n.kind == "run" and n.parent is not None else n.kind
        boxes[n.key] = ax.text(x, -d, box_text(n), ha="center", va="center", fontsize=6.5, zorder=3,
                               bbox=dict(boxstyle="round,pad=0.4", fc=COLORS.get(mode, "#ffffff"),
                                         ec="#d4a017" if n.best_leaf else "#888888", lw=2.2 if n.best_leaf else 0.8,
                                         ls="--" if n.kind in ("missing", "foreign") else "-"))
    fig.canvas.draw()  # the boxes' sizes, for arrows that end at their edges

    def arrow(a, b, label: str | None, dashed: bool = False) -> None:
        (xa, ya), (xb, yb) = a.get_position(), b.get_position()
        ax.annotate("", xy=(xb, yb), xytext=(xa, ya), zorder=2, arrowprops=dict(
            arrowstyle="-|>", color="#555555", lw=1, ls="--" if dashed else "-", shrinkA=2, shrinkB=2,
            patchA=a.get_bbox_patch(), patchB=b.get_bbox_patch()))
        if label:
            ax.text(xa + (xb - xa) * 0.5, (ya + yb) / 2, label, fontsize=6, ha="center", va="center", zorder=2.5,
                    color="#333333", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))

    for n in nodes:
        if n.parent is not None:
            arrow(boxes[n.parent.key], boxes[n.key], n.data.get("mode"), dashed=n.parent.kind != "run")
        elif ("sweep", n.key) in boxes:
            arrow(boxes[("sweep", n.key)], boxes[n.key], None)
    ax.set_title("Run families: best ± spread of the last 5 validations, values changed against the parent",
                 fontsize=8)
    legend = [("new run", "new", "-"), ("continued (resume=full, new dir)", "continued", "-"),
              ("reset_optimizer", "reset_optimizer", "-"), ("file of another script", "foreign", "--"),
              ("missing parent", "missing", "--")]
    handles = [Patch(fc=COLORS[key], ec="#888888", ls=ls, label=label) for label, key, ls in legend]
    handles.append(Patch(fc="white", ec="#d4a017", lw=2.2, label="best leaf"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=6.5, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.savefig(out, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------------- command

def lineage(paths: list[str] | None = None, out=None) -> dict:
    defaults = not paths
    roots = load(paths or ["outputs", "multirun"], defaults=defaults)
    if not roots:
        where = ", ".join(paths or ["outputs/", "multirun/"])
        raise UserError(f"No run with a {FILE} under {where}. Runs write it with their checkpoints (from this "
                        "version on); pass the folders that hold your run dirs.")
    fams = families(roots)
    result = {"families": []}
    for family in fams:
        best = mark_best_leaves(family)
        result["families"].append({**as_json(family), "best_leaf": best.name if best else None})
    result["text"] = "\n\n".join("\n".join(text_tree(f)) for f in fams)
    out = Path(out) if out else Path("lineage.png")
    if out.parent and not out.parent.is_dir():
        raise UserError(f"--out {str(out)!r}: its folder does not exist.")
    draw(fams, out)
    result["png"] = str(out)
    return result


def main(argv=None) -> int:
    from project.rundirs.reading import fail, plain

    parser = argparse.ArgumentParser(prog="project-lineage", description=__doc__.split("\n\n")[0])
    parser.add_argument("paths", nargs="*", help="run dirs, sweep dirs or folders holding them "
                                                 "(default: outputs/ and multirun/)")
    parser.add_argument("--out", help="the PNG to write (default: lineage.png)")
    parser.add_argument("--json", action="store_true", help="print the families (nodes, edges, groups) as JSON")
    args = parser.parse_args(argv)
    try:
        result = lineage(args.paths, args.out)
    except UserError as e:
        return fail(e)
    if args.json:
        print(json.dumps(plain({k: v for k, v in result.items() if k != "text"}), indent=1, default=str))
        return 0
    n = len(result["families"])
    print(f"{n} famil{'y' if n == 1 else 'ies'} (best score +- the spread of its last 5 validations; a child "
          "against its parent by the noise rule)\n")
    print(result["text"])
    print(f"\nwrote {result['png']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
