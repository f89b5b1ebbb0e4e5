"""Where this installation's Hydra configs are (conf/), for the commands that compose a config outside run.py:
beside the package in a checkout or an editable install; after a regular `pip install .` (a Docker image, a cluster
module) the package has no conf/ beside it, and the repository the command is typed in provides it."""
from pathlib import Path

from project.errors import UserError

BESIDE_PACKAGE = Path(__file__).resolve().parents[1] / "conf"


def config_dir() -> Path:
    """conf/ beside the package, else the working directory's."""
    for conf in (BESIDE_PACKAGE, Path.cwd() / "conf"):
        if (conf / "config.yaml").is_file():
            return conf
    raise UserError(f"This command composes a config from the project's conf/, which is neither beside the installed "
                    f"package ({BESIDE_PACKAGE.parent}, a regular `pip install .`) nor in the working directory "
                    f"({Path.cwd()}). Run it from the repository that holds run.py and conf/, or install the project "
                    "with `pip install -e .` from there.")


def compose(overrides: list[str]):
    """The config run.py would compose from these overrides."""
    from hydra import compose as hydra_compose, initialize_config_dir

    conf = config_dir()
    try:
        with initialize_config_dir(str(conf), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    except Exception as e:  # a bad override: Hydra's own message names it
        raise UserError(f"Could not compose the config from {list(overrides)}: {e}") from None
