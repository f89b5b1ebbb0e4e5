"""Range checks on the composed config, before anything is built or written."""
import torch
from omegaconf import DictConfig, OmegaConf

from project.errors import UserError

# trainer.precision (Lightning's names) -> the torch.autocast dtype; "32" runs without autocast
AUTOCAST_DTYPES = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


HINTS = {"model._target_": "model._target_=mypkg.nets.MyNet (your class, on PYTHONPATH)",
         "data.root": "data.root=/path/to/your/data"}


def number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def whole(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# (key, what the value must be: "number", "int" or "any", the test, the rule) for keys that may be absent or null
# where the test allows it; a number typed as text (optimizer.lr=abc) is "not a number", never a traceback
RANGES = (
    ("model.dropout", "number", lambda v: 0 <= v < 1, "dropout must be in [0, 1), e.g. model.dropout=0.2"),
    ("optimizer.lr", "number", lambda v: v > 0, "the learning rate must be positive, e.g. optimizer.lr=4e-4"),
    ("optimizer.weight_decay", "number", lambda v: v >= 0, "weight decay must be >= 0"),
    ("trainer.max_epochs", "int", lambda v: v >= 1, "train for at least 1 epoch, e.g. trainer.max_epochs=50"),
    ("trainer.batch_size", "int", lambda v: v >= 1, "the batch size must be at least 1"),
    ("trainer.early_stopping.patience", "int", lambda v: v >= 1,
     "patience must be >= 1, or null to turn early stopping off"),
    ("trainer.eval_interval", "int", lambda v: v >= 1, "validate every N >= 1 epochs"),
    ("trainer.save_interval", "int", lambda v: v >= 1, "save every N >= 1 epochs"),
    ("trainer.keep_last", "int", lambda v: v >= 1, "keep at least 1 periodic checkpoint, or null to keep all"),
    ("trainer.log_every_n_steps", "int", lambda v: v >= 1,
     "update the progress bar and sample train metrics every N >= 1 optimizer steps, e.g. trainer.log_every_n_steps=10"),
    ("trainer.device", "any", lambda v: v in ("auto", "cpu", "cuda") or str(v).startswith("cuda:"),
     "choose auto, cpu, cuda or cuda:N"),
    ("trainer.precision", "any", lambda v: str(v) in AUTOCAST_DTYPES,
     "choose 32, bf16-mixed or 16-mixed (16-mixed adds a GradScaler)"),
    ("trainer.accumulate_grad_batches", "int", lambda v: v >= 1,
     "accumulate the gradients of N >= 1 batches per optimizer step (1 = no accumulation)"),
    ("trainer.gradient_clip_val", "number", lambda v: v > 0,
     "clip the gradient norm to a positive value, e.g. trainer.gradient_clip_val=1.0, or null for no clipping"),
    ("trainer.ema.decay", "number", lambda v: 0 < v < 1,
     "the EMA decay must be in (0, 1), e.g. trainer.ema.decay=0.999, or null to turn EMA off"),
    ("trainer.on_nonfinite", "any", lambda v: v in ("error", "skip"),
     "choose error (stop with exit code 3) or skip (drop the step)"),
    ("trainer.max_nonfinite_skips", "int", lambda v: v >= 0, "must be >= 0"),
    ("scheduler.warmup_epochs", "int", lambda v: v >= 0,
     "warm up for N >= 0 epochs (0 = none), e.g. scheduler.warmup_epochs=1"),
    ("loss.dice_weight", "number", lambda v: v >= 0, "the Dice weight must be >= 0"),
    ("data.image_size", "int", lambda v: v >= 16, "images must be at least 16 pixels, e.g. data.image_size=64"),
    ("data.on_bad_file", "any", lambda v: v in ("error", "skip"),
     "choose error (stop naming an unreadable image or mask, after saving the run) or skip (leave such files out, "
     "with a warning naming each)"),
    ("data.num_workers", "int", lambda v: v >= 0,
     "the number of DataLoader worker processes is >= 0 (0 reads in the training process), e.g. data.num_workers=2"),
)
KINDS = {"number": (number, "a number"), "int": (whole, "a whole number"), "any": (lambda v: True, "")}


def range_problems(cfg: DictConfig) -> list[str]:
    problems = []
    for key, kind, test, rule in RANGES:
        value = OmegaConf.select(cfg, key, default=None)
        if value is None:
            continue
        is_kind, name = KINDS[kind]
        if not is_kind(value):
            problems.append(f"{key}={value!r} is not {name}: {rule}.")
        elif not test(value):
            problems.append(f"{key}={value!r} is out of range: {rule}.")
    return problems


def check_config(cfg: DictConfig) -> None:
    problems = []
    for key in sorted(OmegaConf.missing_keys(cfg)):  # `???` in a config: a value only the user can give
        problems.append(f"{key} has no value (??? in its config); set it, e.g. {HINTS.get(key, key + '=...')}.")

    def bad(key, value, rule):
        problems.append(f"{key}={value!r} is out of range: {rule}.")

    problems += range_problems(cfg)
    t = cfg.trainer
    if t.grad_scaler.init_scale <= 0 or t.grad_scaler.growth_interval < 1:
        bad("trainer.grad_scaler", dict(t.grad_scaler), "init_scale must be > 0 and growth_interval >= 1")
    if t.compile and t.compile_backend not in ("inductor", "aot_eager", "eager", "cudagraphs"):
        bad("trainer.compile_backend", t.compile_backend, "choose inductor (default), aot_eager or eager")
    check_trials(t, bad, problems)
    check_switches(t, bad)
    if cfg.resume.mode == "none" and cfg.resume.checkpoint is not None:
        problems.append(
            f"resume.checkpoint={cfg.resume.checkpoint!r} is set but resume=none ignores it: add resume=full "
            "(continue the run as it was) or resume=reset_optimizer (weights only, fresh optimizer)."
        )
    if problems:
        raise UserError(" ".join(problems) + " Nothing was trained or written.")


def check_trials(t, bad, problems: list) -> None:
    """Trying a recipe: limit_*_batches, overfit_batches, the profiler."""
    for key in ("limit_train_batches", "limit_val_batches"):
        value = t.get(key)
        if value is not None and not is_limit(value):
            bad(f"trainer.{key}", value, f"give a number of batches (an int >= 1, e.g. trainer.{key}=10), a "
                "fraction of them (a float in (0, 1], e.g. 0.25; 1.0 = all), or null for all")
    overfit = t.get("overfit_batches")
    if overfit is not None and (isinstance(overfit, bool) or not isinstance(overfit, int) or overfit < 0):
        bad("trainer.overfit_batches", overfit, "give a number of batches (an int, e.g. trainer.overfit_batches=4), "
            "or 0 / null to turn it off")
    elif overfit and any(t.get(k) is not None for k in ("limit_train_batches", "limit_val_batches")):
        problems.append(
            f"trainer.overfit_batches={overfit} trains and validates on exactly those {overfit} batches, so "
            f"trainer.limit_train_batches={t.get('limit_train_batches')!r} and trainer.limit_val_batches="
            f"{t.get('limit_val_batches')!r} would contradict it: leave both null (limit_train_batches=null "
            "limit_val_batches=null) or turn overfitting off (trainer.overfit_batches=null).")
    profiler = t.get("profiler") or {}
    if profiler.get("enabled"):
        steps = {k: profiler.get(k) for k in ("wait", "warmup", "active", "row_limit")}
        if any(isinstance(v, bool) or not isinstance(v, int) for v in steps.values()) or min(steps.values()) < 0 \
                or steps["active"] < 1 or steps["row_limit"] < 1:
            bad("trainer.profiler", steps, "wait and warmup are optimizer steps >= 0, active >= 1 steps are "
                "recorded and row_limit >= 1 operators are listed, e.g. trainer.profiler.active=6")


MATMUL_PRECISIONS = (None, "highest", "high", "medium")  # torch.set_float32_matmul_precision; None = torch's default


def check_switches(t, bad) -> None:
    """The GPU switches (Lightning's names): float32_matmul_precision, benchmark, deterministic, channels_last."""
    precision = t.get("float32_matmul_precision")
    if precision not in MATMUL_PRECISIONS:
        bad("trainer.float32_matmul_precision", precision, "choose null (torch's default), highest, high (TF32 "
            "matmuls on GPUs) or medium (bf16 matmuls), e.g. trainer.float32_matmul_precision=high")
    benchmark = t.get("benchmark")
    if benchmark is not None and not isinstance(benchmark, bool):
        bad("trainer.benchmark", benchmark, "cuDNN autotuning is on or off: trainer.benchmark=true or false")
    deterministic = t.get("deterministic")
    if not (deterministic is None or isinstance(deterministic, bool) or deterministic == "warn"):
        bad("trainer.deterministic", deterministic, "choose true (deterministic algorithms only), warn (warn on ops "
            "without one) or false")
    channels_last = t.get("channels_last")
    if channels_last is not None and not isinstance(channels_last, bool):
        bad("trainer.channels_last", channels_last, "the memory format is switched on or off: "
            "trainer.channels_last=true or false")


def is_limit(value) -> bool:
    """trainer.limit_*_batches: an int count >= 1 or a float fraction in (0, 1] (bools are not numbers here)."""
    if isinstance(value, bool):
        return False
    return (isinstance(value, int) and value >= 1) or (isinstance(value, float) and 0 < value <= 1)


def check_added_keys(cfg: DictConfig, typed: list[str]) -> None:
    """`+group.key=value` adds a key the group's config does not have: refused unless the group's component takes
    it (its `_target_`'s signature; one with **kwargs cannot be checked). A typo (`+trainer.max_epoch=3`) would
    otherwise be ignored silently, or end in the component's TypeError after the run dir was made."""
    problems = []
    for override in typed:
        key = override.lstrip("+").split("=", 1)[0]
        group, _, rest = key.partition(".")
        node = cfg.get(group) if override.startswith("+") and rest else None
        if not isinstance(node, DictConfig):
            continue
        name = rest.split(".")[0]
        declared = [str(k) for k in node if k != name and not str(k).startswith("_")]
        target = node.get("_target_")
        takes = accepted_args(target) if target else set()
        if "*" in takes or name in takes:
            continue
        known = sorted(set(declared) | {t for t in takes if t not in ("self", "params", "optimizer")})
        problems.append(unknown_key_message(override, group, name, target, known))
    if problems:
        raise UserError(" ".join(problems) + " Nothing was trained or written.")


def unknown_key_message(override: str, group: str, name: str, target: str | None, known: list[str]) -> str:
    import difflib

    near = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
    hint = f"did you mean {group}.{near[0]}?" if near else "no key of it is close to that name."
    owner = f"{group} ({target}) takes" if target else f"the {group} config has"
    return (f"{override}: {owner} no key {name!r}; {hint} Its keys: {', '.join(known)}. Set an existing key "
            f"without '+' ({group}.KEY=value).")


def accepted_args(target: str) -> set[str]:
    from project.tasks import accepted_args as signature_args  # the one reading of a constructor's signature

    return signature_args(target)
