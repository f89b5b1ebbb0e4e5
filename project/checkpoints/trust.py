"""A shared file never chooses the code that runs: the file supplies values, this installation supplies the code.

A checkpoint, an export's config.json or a sweep's multirun.yaml holds a config, and a config names callables
(`_target_`) that hydra.utils.instantiate imports and calls. Weights load with torch.load(weights_only=True), so
they cannot run code; a config could, through any importable callable (`numpy.load` with allow_pickle runs the
pickle beside it). So before anything is built from a file's config, every `_target_` in it, at any depth, must
be the one this installation composes from conf/ for the file's recorded config-group choices, or one the user
types now (`model._target_=their_pkg.Net` accepts exactly that class). A stored target that differs is refused
with one paragraph (UserError, exit 2) naming the key, the stored target, the one this installation would use,
and the opt-in. The opt-in (`--trust-config` on the commands, `load_model(..., trust_config=True)`,
`resume.trust_config=true`) accepts the file's own targets with a warning naming them. See docs/trust.md.
"""
import logging
from contextlib import contextmanager
from contextvars import ContextVar

from project.config_dir import config_dir
from project.errors import UserError

log = logging.getLogger(__name__)

MISSING = "???"  # a target the config leaves to the user (conf/model/custom.yaml)
SHOWN = 3  # mismatches named in full in a refusal; the rest are counted
FLAG = "--trust-config (load_model: trust_config=True)"

# Set by a command's --trust-config for the loads it makes, or by training for the checkpoint it just wrote
# ("own": its targets are the ones this process built from, so no warning).
_ACCEPTED: ContextVar[str | None] = ContextVar("trust_config", default=None)


@contextmanager
def accepting(how: str | None):
    """Within the block, files' own targets are accepted: "warn" (an opt-in: logged), "own" (this process wrote
    the file from the config it runs), None (the rule applies)."""
    token = _ACCEPTED.set(how)
    try:
        yield
    finally:
        _ACCEPTED.reset(token)


def accepted() -> str | None:
    return _ACCEPTED.get()


def targets(node, prefix: str = "") -> dict:
    """{dotted path of a node: its `_target_`} for every node of a plain config (dicts and lists) that has one."""
    found = {}
    if isinstance(node, dict):
        if "_target_" in node:
            found[prefix.rstrip(".")] = node["_target_"]
        for key, value in node.items():
            if key != "_target_":
                found.update(targets(value, f"{prefix}{key}."))
    elif isinstance(node, (list, tuple)):
        for i, value in enumerate(node):
            found.update(targets(value, f"{prefix}{i}."))
    return found


def plain(config):
    """A DictConfig as plain containers, interpolations resolved where they can be (`???` kept as it is)."""
    from omegaconf import DictConfig, ListConfig, OmegaConf

    if not isinstance(config, (DictConfig, ListConfig)):
        return config
    try:
        return OmegaConf.to_container(config, resolve=True, throw_on_missing=False)
    except Exception:  # an interpolation only a running Hydra app resolves (${hydra:...}): compare as written
        return OmegaConf.to_container(config, resolve=False, throw_on_missing=False)


def typed_targets(typed) -> dict:
    """{path: target} the user typed now: `model._target_=pkg.Net`, `+model.head._target_=...`, or a node given
    whole (`model={_target_: pkg.Net}`)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    found, parser = {}, OverridesParser.create()
    for text in typed or []:
        if "_target_" not in text or text.startswith("~"):
            continue
        try:
            override = parser.parse_overrides([text])[0]
            key, value = override.key_or_group, override.value()
        except Exception:  # not Hydra's grammar: the command that merges it reports it
            key, _, value = text.lstrip("+").partition("=")
        if key == "_target_" or key.endswith("._target_"):
            found[key[:-len("_target_")].rstrip(".")] = value
        elif isinstance(value, dict):
            found.update(targets(value, f"{key}."))
    return found


def recorded_choices(saved: dict) -> dict:
    """The config-group options a checkpoint's run was composed with: its `choices`; for a file saved before they
    were recorded, the groups its overrides chose (logger=csv) over the default model of that time."""
    if saved.get("choices"):
        return dict(saved["choices"])
    from project.resume import legacy_choices

    chosen = {}
    for text in saved.get("overrides") or []:
        key, _, option = text.partition("=")
        key = key.lstrip("+")
        if option and "." not in key and not key.startswith(("hydra", "~")):
            chosen[key] = option
    return {**legacy_choices(saved.get("config") or {}), **chosen}


def pins(choices: dict) -> list[str]:
    """The overrides that select the recorded options of this installation's config groups (`+group=option` for a
    group the primary config's defaults list does not name, such as experiment)."""
    import yaml

    listed = set()
    for entry in (yaml.safe_load((config_dir() / "config.yaml").read_text()) or {}).get("defaults", []):
        if isinstance(entry, dict):
            listed.update(str(k).split("@")[0].removeprefix("override ") for k in entry)
    return [f"{'' if group in listed else '+'}{group}={option}" for group, option in choices.items()
            if option is not None and not group.startswith("hydra") and group != "resume"]


def compose_choices(choices: dict, typed=()) -> dict:
    """The plain config this installation composes for `choices`, with the targets typed now on top. Inside a
    running Hydra app (run.py) its own search path applies; elsewhere conf/ and a typed hydra.searchpath."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    searchpath = [o for o in typed or [] if o.split("=", 1)[0].lstrip("+") == "hydra.searchpath"]
    overrides = searchpath + pins(choices)
    try:
        if GlobalHydra.instance().is_initialized():
            config = plain(compose(config_name="config", overrides=overrides))
        else:
            with initialize_config_dir(str(config_dir()), version_base="1.3"):
                config = plain(compose(config_name="config", overrides=overrides))
    except Exception as e:  # an option this installation has no file for
        raise CannotCompose(" ".join(str(e).split())) from None
    for path, target in typed_targets(typed).items():
        place(config, path, target)
    return config


class CannotCompose(Exception):
    """The file's recorded choices name a config-group option this installation does not have."""


def place(config: dict, path: str, target) -> None:
    node = config
    for key in [k for k in path.split(".") if k]:
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict):
            return
        if not isinstance(node.get(key), (dict, list)):
            node[key] = {}
        node = node[key]
    if isinstance(node, dict):
        node["_target_"] = target


def mismatches(config, trusted: dict) -> list[tuple[str, object, object]]:
    """(path, the config's target, the trusted one or None) for every target of `config` that differs."""
    want = targets(trusted)
    return [(path, target, want.get(path)) for path, target in targets(plain(config)).items()
            if target != want.get(path)]


def check_targets(config, choices: dict, typed, source: str, opt_in: str = FLAG, accept: str | None = None):
    """Refuse (UserError) `config`, read from `source`, if one of its targets is neither this installation's for
    `choices` nor typed now; with `accept` (or a command's --trust-config around the call) log the file's own
    targets instead. Returns `config`, whose values fill in under the targets it keeps."""
    accept = accept or accepted()
    if accept == "own" or not targets(plain(config)):
        return config
    try:
        trusted, why = compose_choices(choices, typed), None
    except CannotCompose as e:
        trusted, why = {}, str(e)
    bad = mismatches(config, trusted)
    if not bad:
        return config
    if accept:
        log.warning("Building from %s with its own targets, which this installation would not use (accepted by %s): "
                    "%s", source, opt_in, "; ".join(shown(b, choices) for b in bad))
        return config
    raise refusal(source, bad, choices, why, opt_in)


def shown(mismatch: tuple, choices: dict) -> str:
    path, stored, want = mismatch
    key = f"{path}._target_" if path else "_target_"
    group = path.split(".")[0]
    where = f"conf/{group}/{choices[group]}.yaml" if choices.get(group) else "conf/"
    if want is None:
        here = f"none, {where} has no such node"
    elif want == MISSING:
        here = f"none, {where} leaves it for you to type"
    else:
        here = f"{want} from {where}"
    return f"{key}={stored} (this installation: {here})"


def refusal(source: str, bad: list, choices: dict, why: str | None, opt_in: str) -> UserError:
    named = "; ".join(shown(b, choices) for b in bad[:SHOWN])
    more = f"; and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    cause = (f" Its recorded choices ({' '.join(pins(choices))}) do not compose here ({why[:200]})." if why else "")
    path, stored, _ = bad[0]
    typed = f"{path + '.' if path else ''}_target_={stored}"
    return UserError(
        f"{source} names code that this installation would not run: {named}{more}.{cause} A shared file supplies "
        f"values only; the code comes from this installation's conf/ for the file's recorded choices or from what "
        f"you type now, so nothing was built, read or written. If you know the file and that code is yours, type "
        f"the target ({typed}), or accept the file's own targets with {opt_in}; docs/trust.md says what that means.")


def hydra_refusal(error: Exception, where: str) -> UserError | None:
    """Hydra's own target blocklist (an InstantiationException) as one paragraph; None for other errors."""
    text = " ".join(str(error).split())
    if "blocklisted" not in text and "cannot be authorized" not in text and "ALLOWLIST_OVERRIDE" not in text:
        return None
    reason = text.split(" full_key:")[0]
    return UserError(
        f"{where}: Hydra's target blocklist refuses to build it ({reason}), and no opt-in of this framework lifts "
        "that. A config may name only components "
        "(models, data, objectives), never process, file or code operations; use a model class from your own "
        "package (model=custom model._target_=pkg.Net). Nothing was built or written.")


def names_code(override: str) -> bool:
    """A recorded override that picks code rather than a value: a `_target_`, a logging factory `()`, or a
    config search path (whose options may name any target)."""
    key = override.split("=", 1)[0].lstrip("+~")
    return "_target_" in override or "()" in key or key == "hydra.searchpath"


def check_overrides(recorded: list[str], typed_now: set, source: str, opt_in: str, accept: str | None,
                    same=lambda override: override) -> None:
    """Recorded overrides (a sweep's multirun.yaml) that pick code must be typed again now (`typed_now`, as
    `same` reads each override), or accepted with the opt-in (logged); otherwise one paragraph naming them."""
    named = [o for o in recorded if names_code(o) and same(o) not in typed_now]
    if not named:
        return
    if accept or accepted():
        log.warning("Running with overrides recorded in %s that pick code (accepted by %s): %s", source, opt_in,
                    " ".join(named))
        return
    raise UserError(
        f"{source} records overrides that pick the code to run: {' '.join(named[:SHOWN])}"
        f"{f' and {len(named) - SHOWN} more' if len(named) > SHOWN else ''}. A shared file supplies values only; "
        f"code comes from this installation's conf/ or from what you type now, so nothing was started or changed. "
        f"If that code is yours, type {'them' if len(named) > 1 else 'it'} again after the sweep dir (a "
        f"_target_ override), or accept the recorded ones with {opt_in}; docs/trust.md says what that means.")


def check_file(saved: dict, source, typed=(), opt_in: str = "--trust-config") -> None:
    """A file of ours, opened by a command that only reads it (inspect, analyze): the same rule as the commands
    that build, so a file naming code this installation would not run is named as such everywhere; --trust-config
    shows it anyway. A target the run's own config left for its user to type (model=custom) is not asked for
    again here: nothing is built."""
    config = saved.get("config")
    if not config or accepted() or not targets(plain(config)):
        return
    choices = recorded_choices(saved)
    try:
        trusted, why = compose_choices(choices, list(typed)), None
    except CannotCompose as e:
        trusted, why = {}, str(e)
    bad = [m for m in mismatches(config, trusted) if m[2] != MISSING]
    if bad:
        raise refusal(str(source), bad, choices, why, opt_in)
