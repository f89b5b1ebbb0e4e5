"""Which files validate: a `val/` folder, or a part of `train/` split off by `data.val_fraction` (with its own
`data.split_seed`, never the run's seed, so runs of any seed are scored on the same images) or named by
`data.val_list` (a text file of names, to reproduce a split made elsewhere).

`split()` is a pure decision on the names; `record()` writes both sides into the run dir, and `summary()` is
what checkpoints keep, so a continuation on another split can say that its scores are not comparable.
"""
import hashlib
from pathlib import Path

import torch

from project.atomic import write_atomic
from project.errors import UserError


def read_list(path) -> list[str]:
    """Names, one a line; blank lines and '#' comments ignored; a name may carry its extension (stripped)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise UserError(f"data.val_list={str(path)!r} does not exist. Pass a text file with one name (file stem) "
                        "of train/ per line, e.g. the val.txt of an earlier run dir's split/.")
    names = [line.split("#", 1)[0].strip() for line in path.read_text().splitlines()]
    return [Path(n).with_suffix("").as_posix() if Path(n).suffix.lower() in (".png", ".jpg", ".jpeg") else n
            for n in names if n]


def split(names: list[str], val_fraction=None, val_list=None, split_seed: int = 0) -> tuple[list[str], list[str]]:
    """(train names, val names) of the names found in train/, by fraction or by list; both sorted."""
    names = sorted(names)
    if val_fraction is not None and val_list is not None:
        raise UserError(f"data.val_fraction={val_fraction} and data.val_list={val_list!r} both choose the validation "
                        "images: set one of them (the other to null).")
    if val_list is not None:
        wanted = set(read_list(val_list))
        unknown = sorted(wanted - set(names))
        if unknown:
            raise UserError(f"data.val_list={str(val_list)!r} names {len(unknown)} files that train/ does not have "
                            f"(e.g. {unknown[:3]}); list the names (stems) of images in train/.")
        val = [n for n in names if n in wanted]
    else:
        if not 0 < float(val_fraction) < 1:
            raise UserError(f"data.val_fraction={val_fraction} must lie between 0 and 1 (e.g. 0.1 for 10% of train/).")
        count = max(1, round(len(names) * float(val_fraction)))
        if count >= len(names):
            raise UserError(f"data.val_fraction={val_fraction} of {len(names)} files leaves nothing to train on; "
                            "use a smaller fraction or more data.")
        order = torch.randperm(len(names), generator=torch.Generator().manual_seed(int(split_seed)))
        val = sorted(names[i] for i in order[:count].tolist())
    chosen = set(val)
    return [n for n in names if n not in chosen], val


def choose(root, train: dict, val: dict | None, val_fraction=None, val_list=None, split_seed: int = 0,
           val_layout: str = "ROOT/val/") -> tuple[dict, dict, dict]:
    """A folder's (train, val, record): its val/ folder (`val`, None when it has none) or a part of train/ by
    fraction or list; `record` holds the split's summary and names for the run dir and checkpoints."""
    if val is not None and (val_fraction is not None or val_list is not None):
        raise UserError(f"data.root={str(root)!r} has a val/ folder and {how_split(val_fraction, val_list)} also "
                        "chooses validation images: use one (data.val_fraction=null data.val_list=null for val/, or "
                        "move val/ away).")
    if val is None and val_fraction is None and val_list is None:
        raise UserError(f"data.root={str(root)!r} has no val/ folder. Split validation images off train/ with "
                        "data.val_fraction=0.1 (a fixed split, data.split_seed), or name them in a text file with "
                        f"data.val_list=FILE, or add {val_layout}.")
    how = "val/"
    if val is None:
        train_names, val_names = split(list(train), val_fraction, val_list, split_seed)
        train, val = {n: train[n] for n in train_names}, {n: train[n] for n in val_names}
        how = how_split(val_fraction, val_list, split_seed)
    names = {"train": list(train), "val": list(val)}
    return train, val, {"split": summary(how, names["train"], names["val"]), "split_names": names}


def how_split(val_fraction=None, val_list=None, split_seed: int = 0) -> str:
    if val_list is not None:
        return f"data.val_list={val_list}"
    if val_fraction is not None:
        return f"data.val_fraction={val_fraction} of train/ (data.split_seed={split_seed})"
    return "val/"


def summary(how: str, train: list[str], val: list[str]) -> dict:
    """What a checkpoint keeps of a split: how it was made, the sizes, and a digest of the validation names."""
    digest = hashlib.sha256("\n".join(sorted(val)).encode()).hexdigest()[:16]
    return {"how": how, "train": len(train), "val": len(val), "val_names_sha256": digest}


def record(run_dir: Path, train: list[str], val: list[str]) -> None:
    """split/train.txt and split/val.txt in the run dir: data.val_list=<run dir>/split/val.txt reproduces it."""
    folder = Path(run_dir) / "split"
    folder.mkdir(parents=True, exist_ok=True)
    for name, names in (("train", train), ("val", val)):
        write_atomic(folder / f"{name}.txt", "".join(f"{n}\n" for n in names))


def differs(saved: dict | None, now: dict | None) -> str | None:
    """A sentence when a continuation validates on other images than the checkpoint's run did, else None."""
    if not saved or not now or saved.get("val_names_sha256") == now.get("val_names_sha256"):
        return None
    return (f"the validation split differs from the checkpoint's ({saved['how']}: {saved['val']} images; now "
            f"{now['how']}: {now['val']} images): its scores are not comparable with the ones recorded before")
