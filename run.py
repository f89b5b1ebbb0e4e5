"""Train, or continue a run: python run.py [resume=full|reset_optimizer] [key=value ...]  (see README.md)."""
import logging
import os
import sys
import textwrap
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from project.errors import TrainingDiverged, UserError

log = logging.getLogger("run")


EXIT_CODES = {UserError: 2, TrainingDiverged: 3}  # 2: bad input, nothing written; 3: the loss became NaN/inf


def user_error(e: BaseException | None) -> UserError | TrainingDiverged | None:
    """The error meant for the user behind an exception (hydra.utils.instantiate wraps what a component raises)."""
    while e is not None and not isinstance(e, tuple(EXIT_CODES)):
        e = e.__cause__ or e.__context__
    return e


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from project.train import train  # torch is imported here, after Hydra has parsed the command line

    hc = HydraConfig.get()
    cwd = Path(os.getcwd())
    job = {"overrides": list(hc.overrides.task),
           "choices": {g: c for g, c in hc.runtime.choices.items() if c is not None and not g.startswith("hydra")},
           "sweep_dir": str(Path(hc.sweep.dir).resolve()) if hc.mode.name == "MULTIRUN" else None}
    try:
        summary = train(cfg, Path(hc.runtime.output_dir), [cwd / "outputs", cwd / "multirun"], job)
    except Exception as e:
        error = user_error(e)
        if error is None:
            raise
        log.error("Error: %s", error)  # training.log keeps it too
        if hc.mode.name == "MULTIRUN":
            raise error from None  # the launcher records this job as failed and goes on with the others
        print("\n" + textwrap.fill(f"Error: {error}", width=110, break_long_words=False, break_on_hyphens=False),
              file=sys.stderr)
        sys.exit(EXIT_CODES[type(error)])
    return summary["best_score"]  # what a Hydra sweeper would optimise


if __name__ == "__main__":
    main()
