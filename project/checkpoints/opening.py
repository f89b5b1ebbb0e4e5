"""Opening any checkpoint file: ours, another script's, a .safetensors."""
from pathlib import Path

from project import phases
from project.checkpoints import files as checkpoint
from project.checkpoints import foreign
from project.checkpoints.foreign import FORMAT as FOREIGN
from project.errors import UserError


def compose(overrides: list[str]):
    """The config run.py would compose from these overrides (for files without a config of ours)."""
    from hydra import compose as hydra_compose, initialize_config_dir

    conf = Path(__file__).resolve().parents[2] / "conf"
    try:
        with initialize_config_dir(str(conf), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as e:  # a bad override: Hydra's own message names it
        raise UserError(f"Could not compose the config from {list(overrides)}: {e}") from None


def read_any(path: Path, cfg) -> dict:
    """One of our checkpoints, or one another script wrote (project/foreign.py), in our layout."""
    raw = checkpoint.read(path)
    if checkpoint.is_ours(raw):
        return checkpoint.check(path, raw)
    best_key = phases.build_objective(cfg, phases.plan(cfg)[-1]).keys["best"]
    return foreign.normalise(raw, path, cfg.resume.get("weights_key"), best_key)


def validated_weights(saved: dict, weights_key: str | None = None) -> tuple[str, dict]:
    """The weights a checkpoint's scores came from: the EMA copy when its run validated with it, or the key the
    user named (resume.weights_key)."""
    if saved.get("format") == FOREIGN:  # its weights were found (or picked by resume.weights_key) when read
        return saved["weights_key"] or "state dict", saved["model_state_dict"]
    if weights_key:
        if weights_key not in saved:
            raise UserError(f"resume.weights_key={weights_key!r} is not in the checkpoint; it holds "
                            "model_state_dict" + (" and ema_state_dict" if "ema_state_dict" in saved else "") + ".")
        return weights_key, saved[weights_key]
    if saved.get("validated_weights") == "ema" and saved.get("ema_state_dict") is not None:
        return "ema", saved["ema_state_dict"]
    return "model", saved["model_state_dict"]
