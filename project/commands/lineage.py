"""lineage [PATH ...]: the family of a run, from the lineage.json every run dir keeps.

    project-lineage                                   # outputs/ and multirun/ under the current directory
    project-lineage outputs/2026-11-27 multirun/2026-11-27/12-00-00 [--out lineage.png] [--json]

Each run dir has a small lineage.json, rewritten with its checkpoints (train.py's save(), through
project/rundirs/lineage.py): its parent (the checkpoint it continued, that run's dir, the mode), the config values it changed, its
best score and the spread of its last 5 validations (project/noise.py), how many times it was started in that
dir, its sweep and tags. Drawing a family reads these files only, never a checkpoint.

A node is a run dir: a `resume=full` requeue or restart in the same dir is the same node (counted in `starts`);
a `resume=full` into a new dir is a child marked "continued"; a `reset_optimizer` run is a child marked so; a file
another script wrote is a root whose stored best was computed by another script; a parent that is not found
(moved or deleted, or made before lineage.json existed) is shown as missing. Sweep jobs with the same parent
(or none) hang together as one group (project/rundirs/families.py reads them). Prints every family as a text
tree and draws them all into one PNG.
"""
import argparse
import json
import math
import sys
from pathlib import Path

from project.commands.text import fail, plain
from project.errors import UserError
from project.rundirs.families import Node, families, groups_of, load, mark_best_leaves, shown, walk
from project.rundirs.lineage import FILE


# --------------------------------------------------------------------------------------------- text and JSON

def fixed(value, digits=4) -> str:
    """Scores with 4 decimals, never in scientific notation (unlike text.fmt), missing as '-'."""
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
    best = f"best {d.get('monitor')} {fixed(d.get('best'))}"
    if d.get("spread") is not None:
        best += f" +- {fixed(d['spread'])}"
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
    spread = f": spread {fixed(v['spread'])}" if v["spread"] is not None else ""
    return (f"{'beats' if v['beats'] else 'does not beat'} {v['what']} ({fixed(v['reference'])}): "
            f"{v['gain']:+.4f} ({noise_}{spread})")


def node_lines(node: Node) -> list[str]:
    """The node's line in the tree, then its detail lines (changed values, the verdict against the parent)."""
    d = node.data
    if node.kind == "foreign":
        stored = f"stored {d.get('best_name') or 'best'} {fixed(d.get('best_score'))}" \
            if d.get("best_score") is not None else "no stored best"
        return [f"{node.name}  [file of another script] {stored} (computed by another script)"]
    if node.kind == "missing":
        kids = len(node.children)
        there = Path(node.key.split(":", 1)[1]).is_dir()
        why = "it has no lineage.json (made before this version)" if there else "moved or deleted"
        return [f"{node.name}  [missing parent: {why}] best {fixed(d.get('best_score'))} at epoch {d.get('epoch')} "
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
        stored = f"stored best {fixed(d.get('best_score'))}" if d.get("best_score") is not None else "no stored best"
        return f"{short(node.name)}\nfile of another script\n{stored}\n(computed by another script)"
    if node.kind == "missing":
        return f"{short(node.name)}\nmissing parent\n(moved or deleted)\nbest then {fixed(d.get('best_score'))}"
    lines = [short(node.name) + (f"  ({d['starts']} starts)" if d.get("starts", 1) > 1 else ""),
             f"{fixed(d.get('best'))} ± {fixed(d.get('spread'))}  ep {d.get('best_epoch')}/{d.get('epoch')}"
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


def group_box(ax, pos: dict, members: list[Node], label: str) -> None:
    """A dashed box around the jobs of one sweep, labelled at its top left."""
    from matplotlib.patches import FancyBboxPatch

    xs = [pos[m.key][0] for m in members]
    y = -pos[members[0].key][1]
    ax.add_patch(FancyBboxPatch((min(xs) - 0.47, y - 0.44), max(xs) - min(xs) + 0.94, 0.86,
                                boxstyle="round,pad=0.02", fc="#f4f0fa", ec="#8e7cc3", lw=1, ls="--", zorder=0))
    ax.text(min(xs) - 0.45, y + 0.4, label, fontsize=6.5, color="#5b4a91", va="top", ha="left", zorder=1)


def sweep_boxes(ax, fams: list[list[Node]], nodes: list[Node], pos: dict) -> dict:
    """The sweeps' group boxes; a sweep without a parent gets its own box on top, the jobs below. Returns
    {("sweep", job key): that top box}."""
    heads = {}
    for family in fams:
        if len(family) > 1 or family[0].sweep:
            group_box(ax, pos, family, f"sweep {short(shown(family[0].sweep))}")
            xs = [pos[t.key][0] for t in family]
            head = ax.text((min(xs) + max(xs)) / 2, 0, f"sweep {shown(family[0].sweep)}\n({jobs(len(family))}, no "
                           "parent)", ha="center", va="center", fontsize=7, zorder=3,
                           bbox=dict(boxstyle="round,pad=0.4", fc="#f4f0fa", ec="#8e7cc3"))
            for t in family:
                heads.setdefault(("sweep", t.key), head)
    for n in nodes:
        for sweep, members in groups_of(n.children):
            if sweep:
                group_box(ax, pos, members, f"sweep {short(shown(sweep))} ({jobs(len(members))})")
    return heads


def node_box(ax, n: Node, pos: dict):
    """A node's box, coloured by how it came from its parent; the best leaf framed in gold."""
    x, d = pos[n.key]
    mode = n.data.get("mode") if n.kind == "run" and n.parent is not None else n.kind
    return ax.text(x, -d, box_text(n), ha="center", va="center", fontsize=6.5, zorder=3,
                   bbox=dict(boxstyle="round,pad=0.4", fc=COLORS.get(mode, "#ffffff"),
                             ec="#d4a017" if n.best_leaf else "#888888", lw=2.2 if n.best_leaf else 0.8,
                             ls="--" if n.kind in ("missing", "foreign") else "-"))


def arrow(ax, a, b, label: str | None, dashed: bool = False) -> None:
    """From box `a` to box `b`, ending at their edges (the boxes drawn first), with the edge's name midway."""
    (xa, ya), (xb, yb) = a.get_position(), b.get_position()
    ax.annotate("", xy=(xb, yb), xytext=(xa, ya), zorder=2, arrowprops=dict(
        arrowstyle="-|>", color="#555555", lw=1, ls="--" if dashed else "-", shrinkA=2, shrinkB=2,
        patchA=a.get_bbox_patch(), patchB=b.get_bbox_patch()))
    if label:
        ax.text(xa + (xb - xa) * 0.5, (ya + yb) / 2, label, fontsize=6, ha="center", va="center", zorder=2.5,
                color="#333333", bbox=dict(boxstyle="round,pad=0.15", fc="white", ec="none", alpha=0.9))


def legend(fig) -> None:
    from matplotlib.patches import Patch

    entries = [("new run", "new", "-"), ("continued (resume=full, new dir)", "continued", "-"),
               ("reset_optimizer", "reset_optimizer", "-"), ("file of another script", "foreign", "--"),
               ("missing parent", "missing", "--")]
    handles = [Patch(fc=COLORS[key], ec="#888888", ls=ls, label=label) for label, key, ls in entries]
    handles.append(Patch(fc="white", ec="#d4a017", lw=2.2, label="best leaf"))
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=6.5, frameon=False)


def draw(fams: list[list[Node]], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

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
    boxes = sweep_boxes(ax, fams, nodes, pos)
    for n in nodes:
        boxes[n.key] = node_box(ax, n, pos)
    fig.canvas.draw()  # the boxes' sizes, for arrows that end at their edges
    for n in nodes:
        if n.parent is not None:
            arrow(ax, boxes[n.parent.key], boxes[n.key], n.data.get("mode"), dashed=n.parent.kind != "run")
        elif ("sweep", n.key) in boxes:
            arrow(ax, boxes[("sweep", n.key)], boxes[n.key], None)
    ax.set_title("Run families: best ± spread of the last 5 validations, values changed against the parent",
                 fontsize=8)
    legend(fig)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    from project.atomic import replacing

    with replacing(out) as tmp:  # the format from the real name: the temp one ends in .tmp
        fig.savefig(tmp, format=Path(out).suffix[1:] or "png", dpi=110)
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