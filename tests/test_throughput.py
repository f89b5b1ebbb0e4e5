"""Throughput on every run (issue 27): images/s, the data-wait share, the step time (and peak memory on a GPU) per
epoch in the log line and metrics.csv, a summary at the end, the input-bound advice once, and a measurement that
adds no host-device synchronisation to the step. In-process: tiny runs, no subprocess."""
import logging
import time

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from conftest import ROOT, TINY
from project import throughput
from project.loggers import read_rows
from project.recipe import epoch_end, loop, messages, setup
from project.recipe.train import train
from project.runtime import StopRequest

PERF = ["perf_images_per_s", "perf_data_wait", "perf_step_ms"]


@pytest.fixture(scope="module")
def config():
    with initialize_config_dir(str(ROOT / "conf"), version_base="1.3"):
        yield lambda *overrides: compose("config", overrides=[*TINY, *overrides])


class Sleepy:
    """A starved loader's dataset: the tiny in-memory set, sleeping `seconds` per sample it hands out (in the main
    process: 0 workers), so the step waits for every batch."""

    def __init__(self, dataset, seconds: float):
        self.dataset, self.seconds = dataset, seconds

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, i):
        time.sleep(self.seconds * (len(i) if isinstance(i, torch.Tensor) and i.dim() else 1))
        return self.dataset[i]

    def __getattr__(self, name):  # whatever else the loader or the model's probe asks of the dataset
        return getattr(self.dataset, name)


def test_a_starved_loader_is_called_input_bound_once(config, tmp_path, monkeypatch, caplog):
    build_data = setup.build_data

    def starved(cfg):
        data = build_data(cfg)
        data["train"] = Sleepy(data["train"], 0.02)  # 0.16 s a batch of 8, against a step of a few ms
        return data

    monkeypatch.setattr(setup, "build_data", starved)
    run_dir = tmp_path / "run"
    with caplog.at_level(logging.INFO, logger="project.recipe"):
        summary = train(config("data.train_size=32"), run_dir, [tmp_path], {"overrides": TINY})
    rows = read_rows(run_dir / "metrics.csv")
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert all(float(r["perf_data_wait"]) > 0.5 for r in rows), rows
    assert all(float(r["perf_images_per_s"]) > 0 and float(r["perf_step_ms"]) > 0 for r in rows)
    assert "perf_peak_allocated_gib" not in rows[0]  # peak memory on a GPU only
    advice = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Input-bound")]
    assert len(advice) == 1, "said once per run, not every epoch"
    assert "data.num_workers=0" in advice[0] and "data.image_size=32" in advice[0]
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and all(" img/s, data wait " in line and " ms" in line for line in lines)
    assert summary["perf/mean_data_wait"] > 0.5 and summary["perf/mean_images_per_s"] > 0
    assert any(r.getMessage().startswith("Throughput: ") for r in caplog.records)


def test_a_fed_run_is_not_input_bound(config, tmp_path, caplog):
    """The in-memory tiny set: the perf columns come after every score column, and no advice."""
    with caplog.at_level(logging.INFO, logger="project.recipe"):
        train(config("trainer.max_epochs=1"), tmp_path / "run", [tmp_path], {"overrides": TINY})
    (row,) = read_rows(tmp_path / "run" / "metrics.csv")
    assert list(row)[-3:] == PERF and list(row)[:3] == ["epoch", "phase", "lr"]
    assert float(row["perf_data_wait"]) < 0.5
    assert not [r for r in caplog.records if r.getMessage().startswith("Input-bound")]


class Unmeasured:
    """The measurement switched off: what the loop calls, doing nothing."""

    def start_epoch(self):
        pass

    def arrived(self):
        pass

    def done(self, images):
        pass

    def read(self):
        pass

    def images_per_s(self):
        return 0.0

    def end_epoch(self):
        return {}


def test_measuring_adds_no_synchronisation_to_the_step(config, tmp_path, monkeypatch):
    """The same epoch with the measurement on and off calls .item(), .cpu() and the synchronisations equally
    often: the marks are host times (CPU) or CUDA events read where the loop synchronises anyway (GPU)."""
    calls = {}

    def counting(name, original):
        def counted(*args, **kwargs):
            calls[name] = calls.get(name, 0) + 1
            return original(*args, **kwargs)
        return counted

    def epoch_calls(run_dir, measured: bool) -> dict:
        run = setup.setup(config(), OmegaConf.to_container(config(), resolve=True), [], None, run_dir, {})
        if not measured:
            run.perf = Unmeasured()
        messages.announce(run)
        run.stop = StopRequest()
        calls.clear()
        try:
            with monkeypatch.context() as m:
                for owner, name in [(torch.Tensor, "item"), (torch.Tensor, "cpu"), (torch.Tensor, "tolist"),
                                    (torch.cuda, "synchronize"), (torch.cuda.Event, "synchronize"),
                                    (torch.cuda.Event, "wait"), (torch.cuda.Stream, "synchronize")]:
                    m.setattr(owner, name, counting(f"{getattr(owner, '__name__', owner)}.{name}",
                                                    getattr(owner, name)))
                loop.train_epoch(run, 0)
            return dict(calls)
        finally:
            run.stop.close()
            run.writer.wait()

    on, off = epoch_calls(tmp_path / "on", True), epoch_calls(tmp_path / "off", False)
    assert on == off and on.get("Tensor.item", 0) > 0, (on, off)  # the loop's own .item() calls are seen


class FakeEvent:
    """A CUDA event on a machine without one: complete once the fake stream has synchronised past it."""
    stream: list = []
    synced = 0  # events recorded before the last synchronisation are complete

    def __init__(self, enable_timing=False):
        self.t = None

    def record(self):
        self.t = len(FakeEvent.stream)
        FakeEvent.stream.append(self)

    def query(self):
        return self.t < FakeEvent.synced

    def synchronize(self):
        FakeEvent.synced = max(FakeEvent.synced, self.t + 1)

    def elapsed_time(self, end):
        assert self.query() and end.query(), "read an event still in flight: that would have waited on the GPU"
        return float(end.t - self.t)


def test_gpu_marks_are_read_only_after_a_synchronisation(monkeypatch):
    """On a GPU the marks are events: read() leaves those in flight for later, end_epoch() reads them all (the last
    step's loss.item() has completed them), and peak memory is reported per epoch."""
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(FakeEvent, "stream", [])
    monkeypatch.setattr(FakeEvent, "synced", 0)
    monkeypatch.setattr(torch.cuda, "reset_peak_memory_stats", lambda device=None: None)
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device=None: 2**30)
    monkeypatch.setattr(torch.cuda, "max_memory_reserved", lambda device=None: 2 * 2**30)
    perf = throughput.Throughput(torch.device("cuda"))
    for _ in range(3):
        perf.arrived()
        perf.done(8)
    perf.read()  # nothing synchronised yet: nothing read, nothing waited on
    assert perf.step == 0 and len(perf.pending) == 3
    FakeEvent.synced = len(FakeEvent.stream)  # the loop's loss.item()
    perf.read()
    assert perf.pending == [] and perf.step == perf.wait == pytest.approx(0.003)  # 1 ms a gap in the fake stream
    figures = perf.end_epoch()
    assert figures["perf_peak_allocated_gib"] == 1.0 and figures["perf_peak_reserved_gib"] == 2.0
    assert throughput.epoch_text(figures).endswith(", peak 1.00/2.00 GiB")


def test_compare_shows_images_per_s_beside_the_scores(tmp_path, capsys):
    from project.commands import compare
    from project.loggers import append_rows

    for name, speed in [("fast", 900.0), ("slow", 300.0)]:
        rows = [{"epoch": e, "phase": "train", "lr": 1e-3, "train_loss": 1.0, "val_loss": 1.0,
                 "val_f_score": 0.5 + e / 10 + (speed > 500) / 100, "perf_images_per_s": speed + e,
                 "perf_data_wait": 0.1, "perf_step_ms": 5.0} for e in (1, 2)]
        (tmp_path / name).mkdir()
        append_rows(tmp_path / name / "metrics.csv", rows)
    result = compare.compare([str(tmp_path / "fast"), str(tmp_path / "slow")], out=tmp_path / "out")
    header, *rows = result["table"]
    column = header.index("img/s")
    assert header[column - 1] == "best val f_score"
    assert {r[1]: r[column] for r in rows} == {"fast": "902", "slow": "302"}
