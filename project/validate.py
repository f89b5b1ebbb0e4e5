"""Range checks on the composed config, before anything is built or written."""
import torch
from omegaconf import DictConfig, OmegaConf

from project.errors import UserError

# trainer.precision (Lightning's names) -> the torch.autocast dtype; "32" runs without autocast
AUTOCAST_DTYPES = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


HINTS = {"model._target_": "model._target_=mypkg.nets.MyNet (your class, on PYTHONPATH)",
         "data.root": "data.root=/path/to/your/data"}


def check_config(cfg: DictConfig) -> None:
    problems = []
    for key in sorted(OmegaConf.missing_keys(cfg)):  # `???` in a config: a value only the user can give
        problems.append(f"{key} has no value (??? in its config); set it, e.g. {HINTS.get(key, key + '=...')}.")

    def bad(key, value, rule):
        problems.append(f"{key}={value!r} is out of range: {rule}.")

    dropout = cfg.model.get("dropout")
    if dropout is not None and not 0 <= dropout < 1:
        bad("model.dropout", dropout, "dropout must be in [0, 1), e.g. model.dropout=0.2")
    if not cfg.optimizer.lr > 0:
        bad("optimizer.lr", cfg.optimizer.lr, "the learning rate must be positive, e.g. optimizer.lr=4e-4")
    if cfg.optimizer.get("weight_decay", 0) < 0:
        bad("optimizer.weight_decay", cfg.optimizer.weight_decay, "weight decay must be >= 0")
    t = cfg.trainer
    if not (isinstance(t.max_epochs, int) and t.max_epochs >= 1):
        bad("trainer.max_epochs", t.max_epochs, "train for at least 1 epoch, e.g. trainer.max_epochs=50")
    if not t.batch_size >= 1:
        bad("trainer.batch_size", t.batch_size, "the batch size must be at least 1")
    if t.early_stopping.patience is not None and t.early_stopping.patience < 1:
        bad("trainer.early_stopping.patience", t.early_stopping.patience,
            "patience must be >= 1, or null to turn early stopping off")
    if not t.eval_interval >= 1:
        bad("trainer.eval_interval", t.eval_interval, "validate every N >= 1 epochs")
    if not t.save_interval >= 1:
        bad("trainer.save_interval", t.save_interval, "save every N >= 1 epochs")
    if t.keep_last is not None and t.keep_last < 1:
        bad("trainer.keep_last", t.keep_last, "keep at least 1 periodic checkpoint, or null to keep all")
    if t.device not in ("auto", "cpu", "cuda") and not str(t.device).startswith("cuda:"):
        bad("trainer.device", t.device, "choose auto, cpu, cuda or cuda:N")
    if str(t.precision) not in AUTOCAST_DTYPES:
        bad("trainer.precision", t.precision, "choose 32, bf16-mixed or 16-mixed (16-mixed adds a GradScaler)")
    if not (isinstance(t.accumulate_grad_batches, int) and t.accumulate_grad_batches >= 1):
        bad("trainer.accumulate_grad_batches", t.accumulate_grad_batches,
            "accumulate the gradients of N >= 1 batches per optimizer step (1 = no accumulation)")
    if t.gradient_clip_val is not None and not t.gradient_clip_val > 0:
        bad("trainer.gradient_clip_val", t.gradient_clip_val,
            "clip the gradient norm to a positive value, e.g. trainer.gradient_clip_val=1.0, or null for no clipping")
    if t.ema.decay is not None and not 0 < t.ema.decay < 1:
        bad("trainer.ema.decay", t.ema.decay, "the EMA decay must be in (0, 1), e.g. trainer.ema.decay=0.999, "
            "or null to turn EMA off")
    if t.grad_scaler.init_scale <= 0 or t.grad_scaler.growth_interval < 1:
        bad("trainer.grad_scaler", dict(t.grad_scaler), "init_scale must be > 0 and growth_interval >= 1")
    if t.on_nonfinite not in ("error", "skip"):
        bad("trainer.on_nonfinite", t.on_nonfinite, "choose error (stop with exit code 3) or skip (drop the step)")
    if t.max_nonfinite_skips < 0:
        bad("trainer.max_nonfinite_skips", t.max_nonfinite_skips, "must be >= 0")
    if t.compile and t.compile_backend not in ("inductor", "aot_eager", "eager", "cudagraphs"):
        bad("trainer.compile_backend", t.compile_backend, "choose inductor (default), aot_eager or eager")
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
    check_switches(t, bad)
    if cfg.loss.get("dice_weight", 0) < 0:
        bad("loss.dice_weight", cfg.loss.dice_weight, "the Dice weight must be >= 0")
    if cfg.data.get("image_size", 32) < 16:
        bad("data.image_size", cfg.data.image_size, "images must be at least 16 pixels, e.g. data.image_size=64")
    if cfg.resume.mode == "none" and cfg.resume.checkpoint is not None:
        problems.append(
            f"resume.checkpoint={cfg.resume.checkpoint!r} is set but resume=none ignores it: add resume=full "
            "(continue the run as it was) or resume=reset_optimizer (weights only, fresh optimizer)."
        )
    if problems:
        raise UserError(" ".join(problems) + " Nothing was trained or written.")


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
