"""inspect CHECKPOINT: what is inside one of our checkpoints, and how its config differs from another.

    python -m project.commands.inspect outputs/2026-01-01/12-00-00/checkpoints/best_model.pth
    python -m project.commands.inspect best_model.pth --diff other_run/checkpoints/best_model.pth   # or a run directory
    python -m project.commands.inspect best_model.pth --diff conf/config.yaml    # the config a new run would get now
    python -m project.commands.inspect best_model.pth --json

CHECKPOINT may also be a run directory (its checkpoints/last.pth). The file is opened as resume opens it
(project/checkpoints/opening.py, torch.load with weights_only=True), so a broken file gets the same explanation,
exit status 2, and a file another script wrote shows the stored best resume would take: the one of the metric
the config names (key=value overrides after CHECKPOINT, e.g. loss.metric=image_f1 for its best_image_f_score).
"""
import argparse
import json
import sys
from pathlib import Path

from project.errors import UserError
from project.rundirs.reading import flatten
from project.commands.text import READS, fail, fmt, plain, trust_flag, trusting


def resolve(path) -> Path:
    """A .pth as given; a run directory means its checkpoints/last.pth (checkpoints/resolve.py's table)."""
    from project.checkpoints.resolve import checkpoint_file

    return checkpoint_file(path, "inspect")


def load(path) -> dict:
    """One of our checkpoints (what --diff compares with; another script's has no config: refused)."""
    from project.checkpoints import files  # torch is imported here, after the arguments are parsed

    return files.load(resolve(path))


def tensors_per_module(state: dict) -> dict:
    """{top-level module: {"values": all of model_state_dict (parameters and buffers), "trained": the parameters
    the optimizer holds}}."""
    trained = {n for g in state["optimizer_state_dict"].get("param_groups", []) for n in g.get("param_names", [])}
    counts = {}
    for key, tensor in state["model_state_dict"].items():
        entry = counts.setdefault(key.split(".")[0], {"values": 0, "trained": 0})
        entry["values"] += tensor.numel()
        entry["trained"] += tensor.numel() if key in trained else 0
    return counts


def checkpoint_report(path: Path, state: dict) -> dict:
    """Everything a person asks about a checkpoint, as plain data (what --json prints)."""
    config = state["config"]
    phases = list((config.get("schedule") or {}).get("phases") or {})
    optimizer = state["optimizer_state_dict"]
    steps = {float(s["step"]) for s in optimizer.get("state", {}).values() if "step" in s}
    inside = {
        "model": f"{len(state['model_state_dict'])} tensors",
        "optimizer": f"{config['optimizer']['_target_'].rsplit('.', 1)[-1]}, state for "
                     f"{len(optimizer.get('state', {}))} parameters"
                     + (f" ({int(max(steps))} steps)" if steps else "")
                     + ", lr for the next epoch " + ", ".join(fmt(g["lr"]) for g in optimizer.get("param_groups", [])),
        "scheduler": ", ".join(f"{k}={v}" for k, v in state["scheduler_state_dict"].items()
                               if isinstance(v, (int, float)) and not isinstance(v, bool) and not k.startswith("_"))
                     or "no counters",
        "rng": ", ".join(k for k in ("python", "numpy", "torch") if k in state["rng"])
               + (f", cuda ({len(state['rng']['cuda'])} devices)" if state["rng"].get("cuda") else ""),
    }
    if state.get("batch_in_epoch"):
        inside["mid-epoch"] = f"running train statistics of {state['batch_in_epoch']} batches"
    if state.get("scaler_state_dict"):
        scaler = state["scaler_state_dict"]
        inside["grad scaler"] = f"scale {scaler['scale']:g}, growth tracker {scaler['_growth_tracker']}"
    if state.get("ema_state_dict") is not None:
        inside["ema"] = (f"{len(state['ema_state_dict'])} tensors, {state.get('ema_updates', 0)} updates; "
                         f"validated with the {state.get('validated_weights', 'model')} weights")
    trainer = config.get("trainer", {})
    deterministic = trainer.get("deterministic")
    settings = [f"precision {state['precision']}" if state.get("precision") else "",
                "compiled" if state.get("compiled") else "",
                f"float32 matmul precision {trainer['float32_matmul_precision']}"
                if trainer.get("float32_matmul_precision") else "",
                "cuDNN benchmark" if trainer.get("benchmark") else "",
                ("deterministic (warn)" if deterministic == "warn" else "deterministic") if deterministic else "",
                "channels-last" if trainer.get("channels_last") else ""]
    if any(settings):
        inside["trained with"] = ", ".join(s for s in settings if s)
    if state.get("logger"):
        inside["logger"] = ", ".join(f"{k}={v}" for k, v in state["logger"].items())
    return {
        "path": str(path), "size_mb": round(path.stat().st_size / 2**20, 2), "format": state["format"],
        "run_dir": state.get("run_dir"), "epoch": state["epoch"], "max_epochs": config["trainer"]["max_epochs"],
        "global_step": state["global_step"], "batch_in_epoch": state.get("batch_in_epoch", 0),
        "phase": state["phase"], "phase_number": state.get("phase_index", 0) + 1, "phases": phases,
        "monitor": state.get("monitor"), "best_score": state.get("best_score"), "best_epoch": state["best_epoch"],
        "val_metrics": state.get("val_metrics", {}), "train_metrics": state.get("train_metrics", {}),
        "early_stopping": state["early_stopping"], "parent_best": state.get("parent_best"),
        "parameters": tensors_per_module(state), "dropped_modules": state.get("dropped_modules", []),
        "inside": inside, "lineage": state["lineage"], "provenance": state.get("provenance") or None,
    }


def code_lines(provenance: dict | None) -> list[str]:
    """What the checkpoint's run was made from: the git commits and the versions (older files: not recorded)."""
    if not provenance:
        return ["  code         not recorded (written before checkpoints kept their provenance)",
                "  versions     not recorded"]
    code = provenance.get("code", {})

    def repo(entry: dict) -> str:
        if entry.get("same_repository"):
            return "the same repository"
        if not entry.get("commit"):
            return f"no commit ({entry.get('reason') or 'no commit yet'}) for {entry.get('path')}"
        dirty = (f"dirty ({entry.get('modified', 0)} changed, {entry.get('untracked', 0)} untracked)"
                 if entry.get("dirty") else "clean")
        branch = f" on {entry['branch']}" if entry.get("branch") and entry["branch"] != "HEAD" else ""
        return f"commit {entry['commit']}{branch}, {dirty}, in {entry.get('root')}"

    lines = [f"  code         {repo(code.get('working_dir', {}))}"]
    if code.get("project"):
        lines.append(f"               project package: {repo(code['project'])}")
    if code.get("diff"):
        diff = code["diff"]
        lines.append(f"               uncommitted changes: {diff['file']} in the run dir ({diff['bytes']:,} bytes"
                     + (", cut" if diff.get("truncated") else "") + ")")
    names = {"cuda": "CUDA", "cudnn": "cuDNN"}
    versions = provenance.get("versions", {})
    lines.append("  versions     " + ", ".join(f"{names.get(k, k)} {v if v is not None else 'none'}"
                                           for k, v in versions.items()))
    return lines


def describe_foreign(opened) -> dict:
    """A checkpoint another script wrote (opening.Opened): what resume can take from it, and what it lacks."""
    from project.checkpoints import foreign

    path, raw, normalised = opened.path, opened.raw, opened.state
    key, weights = normalised["weights_key"], normalised["model_state_dict"]
    info = raw if isinstance(raw, dict) and key is not None else {}
    keys = {}
    for name, value in info.items():
        if foreign.is_state_dict(value):
            keys[str(name)] = f"{len(value)} tensors"
        elif isinstance(value, dict) and "state" in value and "param_groups" in value:
            keys[str(name)] = f"optimizer state of {len(value['state'])} parameters"
        elif foreign.number(value) is not None:
            keys[str(name)] = foreign.number(value)
        else:
            keys[str(name)] = type(value).__name__
    best = opened.best
    prefixes = [p for p in foreign.PREFIXES if all(k.startswith(p) for k in weights)]
    epoch = foreign.epoch_words(normalised["epoch"], normalised["history_epochs"])
    holds = ["weights"] + (["optimizer state"] if normalised["optimizer_state_dict"] is not None else []) + (
        [epoch] if "epoch" in info else []) + (
        [f"{best['name']} {best['score']:.4f}"] if best["score"] is not None else [])
    # its own `config` (if any) is its script's settings: what it lacks is one this framework can read
    config = "a config this framework can use" + (" (its `config` is its own script's settings)"
                                                   if "config" in info else "")
    return {"path": str(path), "size_mb": round(path.stat().st_size / 2**20, 2), "format": "foreign",
            "weights_key": key, "tensors": len(weights), "values": sum(t.numel() for t in weights.values()),
            "prefixes": prefixes, "keys": keys, "holds": holds, "stored_best": best,
            "lacks": [k for k, present in (("optimizer state", normalised["optimizer_state_dict"] is not None),
                                           ("epoch", "epoch" in info), ("best score", best["score"] is not None),
                                           (config, False), ("RNG state", False), ("data position", False)) if not present]}


def foreign_report(info: dict) -> str:
    lines = [f"Checkpoint {info['path']} ({info['size_mb']} MB, not written by this framework)",
             f"  weights      {'under ' + repr(info['weights_key']) if info['weights_key'] else 'a bare state dict'}: "
             f"{info['tensors']} tensors, {info['values']:,} values"
             + (f"; every key starts with {' '.join(info['prefixes'])} (stripped on resume)" if info["prefixes"] else "")]
    if info["keys"]:
        lines.append("  keys         " + ", ".join(f"{k}={v}" if isinstance(v, (int, float)) else f"{k} ({v})"
                                                  for k, v in info["keys"].items()))
    lines.append(f"  holds        {', '.join(info['holds'])}")
    lines.append(f"  lacks        {', '.join(info['lacks'])}")
    full = "resume=full can continue it (not bit-exact: what it lacks starts fresh)" if "optimizer state" in \
        info["holds"] else "resume=full cannot (no optimizer state)"
    lines.append(f"  resume       resume=reset_optimizer starts from its weights; {full}")
    return "\n".join(lines)


def other_config(spec) -> tuple[str, dict]:
    """The config to compare with: a checkpoint's, a run directory's, or a YAML file's (a composed config such as
    .hydra/config.yaml, or a primary config such as conf/config.yaml, composed with Hydra as run.py would)."""
    path = Path(spec)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise UserError(f"--diff {spec!r} does not exist. Pass a checkpoint, a run directory or a config YAML.")
        from omegaconf import OmegaConf

        raw = OmegaConf.load(path)
        if "defaults" not in raw:
            return str(path), OmegaConf.to_container(raw, resolve=True)
        from hydra import compose, initialize_config_dir

        with initialize_config_dir(str(path.parent.resolve()), version_base="1.3"):
            return f"{path} (composed)", OmegaConf.to_container(compose(path.stem), resolve=True)
    composed = path / ".hydra" / "config.yaml"
    if path.is_dir() and not (path / "checkpoints" / "last.pth").is_file() and composed.is_file():
        return other_config(composed)  # a run dir without checkpoints yet
    return str(resolve(path)), load(path)["config"]


ABSENT = "<absent>"  # a key one config has and the other lacks (not the same as a null value)


def config_diff(mine: dict, theirs: dict) -> dict:
    """{dotted key: (this checkpoint's value, the other value)} for every key that differs."""
    a, b = flatten(mine), flatten(theirs)
    return {k: (a.get(k, ABSENT), b.get(k, ABSENT)) for k in sorted(set(a) | set(b))
            if a.get(k, ABSENT) != b.get(k, ABSENT)}


def table(rows: list[tuple], indent: int = 2) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = [" " * indent + "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, " " * indent + "  ".join("-" * w for w in widths))
    return lines


def report(info: dict) -> str:
    m = info["monitor"]
    epoch = f"{info['epoch']} of {info['max_epochs']}"
    if info["batch_in_epoch"]:
        epoch += f" (stopped inside epoch {info['epoch'] + 1}, after batch {info['batch_in_epoch']})"
    es = info["early_stopping"]
    lines = [f"Checkpoint {info['path']} ({info['size_mb']} MB, {info['format']})",
             f"  run dir      {info['run_dir']}",
             f"  epoch        {epoch}, global step {info['global_step']}",
             f"  phase        {info['phase']!r} ({info['phase_number']} of {len(info['phases']) or 1}: "
             f"{', '.join(info['phases'])})",
             f"  best         val {m} {fmt(info['best_score'])} at epoch {info['best_epoch']}",
             "  current      val " + " ".join(f"{k} {fmt(v)}" for k, v in info["val_metrics"].items()),
             "               train " + " ".join(f"{k} {fmt(v)}" for k, v in info["train_metrics"].items()),
             f"  early stop   patience {es.get('patience')}, {es.get('bad_epochs')} epochs without improvement, "
             f"{'stopped' if es.get('stopped') else 'not stopped'}"]
    if info["parent_best"]:
        p = info["parent_best"]
        known = info["best_score"] is not None and p.get("score") is not None
        delta = info["best_score"] - p["score"] if known else None
        lines.append(f"  parent best  {fmt(p['score'])} at epoch {p['epoch']} of {p['path']}"
                     + (f" (this run {delta:+.4f})" if delta is not None else ""))
    counts = info["parameters"]
    dropped = info["dropped_modules"]
    lines.append(f"  parameters   {sum(c['trained'] for c in counts.values()):,} trained by the optimizer, "
                 f"{sum(c['values'] for c in counts.values()):,} values in model_state_dict (with buffers)"
                 + (f"; modules dropped earlier: {', '.join(dropped)}" if dropped else ""))
    lines += table([("module", "trained", "all values")] + [(k, f"{c['trained']:,}", f"{c['values']:,}")
                                                           for k, c in counts.items()], indent=4)
    lines.append("  inside       " + "\n               ".join(f"{k}: {v}" for k, v in info["inside"].items()))
    lines += code_lines(info["provenance"])
    if info["lineage"]:
        lines.append("  lineage      (oldest first)")
        for i, e in enumerate(info["lineage"], 1):
            changed = ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in e.get("changed", {}).items())
            epoch = e.get("epoch_note") or f"epoch {e['epoch']}"  # another script's file: its own count, said so
            lines.append(f"    {i}. {e['mode']} from {e['path']} ({epoch}, best {fmt(e.get('best_score'))})"
                         + (f"; changed {changed}" if changed else ""))
    else:
        lines.append("  lineage      none: trained from scratch")
    return "\n".join(lines)


def show(value) -> str:
    return value if value is ABSENT else repr(value)


def diff_report(name: str, diff: dict) -> str:
    if not diff:
        return f"\nConfig identical to {name}."
    rows = [("parameter", "this checkpoint", name)] + [(k, show(a), show(b)) for k, (a, b) in diff.items()]
    return f"\nConfig differences ({len(diff)}):\n" + "\n".join(table(rows))


def checkpoint_info(target, overrides=(), diff=None) -> dict:
    """What main prints (as data): one of our checkpoints described (with the config --diff), or a file another
    script wrote (no config to --diff)."""
    from project.checkpoints import trust
    from project.checkpoints.opening import open_checkpoint  # torch is imported here, after the arguments are parsed

    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"{bad[0]!r} is not a key=value override (e.g. loss.metric=image_f1 for a file another "
                        "script wrote); CHECKPOINT comes first and only once.")
    opened = open_checkpoint(resolve(target), overrides=overrides)
    if opened.ours:
        trust.check_file(opened.state, opened.path, overrides)
    if not opened.ours:
        if diff:
            raise UserError(f"{opened.path} was not written by this framework and has no config to --diff.")
        return describe_foreign(opened)
    info = checkpoint_report(opened.path, opened.state)
    if diff:
        name, theirs = other_config(diff)
        changes = config_diff(opened.state["config"], theirs)
        info["diff"] = {"other": name, "changes": {k: list(v) for k, v in changes.items()}}
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="project-inspect", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a .pth file written by run.py, or a run directory (its last.pth)")
    parser.add_argument("--diff", metavar="OTHER", help="another checkpoint, run directory or config YAML")
    parser.add_argument("--json", action="store_true", help="print plain JSON instead of text")
    trust_flag(parser, READS)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="for a file another script wrote: the config whose metric names its stored best "
                             "(loss.metric=image_f1: best_image_f_score; default: the configured loss.metric)")
    args = parser.parse_args(argv)
    try:
        with trusting(args):
            info = checkpoint_info(args.checkpoint, args.overrides, args.diff)
    except UserError as e:
        return fail(e)
    if info["format"] == "foreign":
        print(json.dumps(plain(info), indent=1, default=str) if args.json else foreign_report(info))
        return 0
    if args.json:
        print(json.dumps(plain(info), indent=1, default=str))
        return 0
    print(report(info))
    if args.diff:
        print(diff_report(info["diff"]["other"], info["diff"]["changes"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
