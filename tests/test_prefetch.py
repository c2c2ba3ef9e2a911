"""training/prefetch.py: the thread makes what the trainer would, in order, from the step it
starts at; errors reach the trainer; the thread is joined however the run ends."""

from __future__ import annotations

import threading

import pytest
import torch

from modexp.models.build import build_model
from modexp.runs import runner
from modexp.training import train as T
from modexp.training.checkpoint import CKPT_FILE
from modexp.training.prefetch import Prefetcher, use_prefetch

from test_gpu_ready import spec_file  # noqa: F401 (the fixture: a one-model spec)


def _alive() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "modexp-prefetch"]


def _make(step: int):
    return [(torch.tensor([step, i]), torch.tensor([i])) for i in range(3)]


def test_prefetched_sequence_is_the_direct_one_from_the_start_step():
    with Prefetcher(_make, 5, 12, depth=2) as p:
        got = [p.get(s) for s in range(5, 12)]
        with pytest.raises(RuntimeError, match="thread ended before step 12"):
            p.get(12)
    direct = [_make(s) for s in range(5, 12)]
    assert all(torch.equal(a, b) for g, d in zip(got, direct) for ga, da in zip(g, d)
               for a, b in zip(ga, da))
    assert not p.thread.is_alive() and not _alive()
    with Prefetcher(_make, 3, 10) as p:
        with pytest.raises(RuntimeError, match="asked for step 4, the thread makes step 3"):
            p.get(4)


def test_an_error_in_the_thread_is_raised_in_the_trainer_as_itself():
    def make(step):
        if step == 2:
            raise OSError(5, "Input/output error")
        return _make(step)

    with Prefetcher(make, 0, 5) as p:
        p.get(0), p.get(1)
        with pytest.raises(OSError, match="Input/output error") as e:
            p.get(2)
    assert e.value.errno == 5 and not _alive()


def test_close_stops_a_thread_blocked_on_a_full_queue():
    p = Prefetcher(_make, 0, 10 ** 9, depth=1)
    p.get(0)
    p.close()
    assert not p.thread.is_alive()


def test_auto_is_cuda_only():
    assert use_prefetch("auto", torch.device("cuda", 0)) and not use_prefetch("auto", torch.device("cpu"))
    assert use_prefetch(True, torch.device("cpu")) and not use_prefetch(False, torch.device("cuda"))


class _Rows:
    def __init__(self):
        self.rows = []

    def log(self, row) -> None:
        self.rows.append(row.to_dict())  # a records.TrainRow or EvalRow


def _losses(rows):
    return [(r["step"], r.get("train_loss"), r.get("eval_loss"), r.get("eval_loss_causal"))
            for r in rows]


def _trainer(p, run, ckpt_dir, prefetch, stop_at=None):
    cfg = next(m for m in p.spec.models if m.name == run.model)
    torch.manual_seed(run.seed)
    model = build_model(cfg, p.spec.variants[run.variant], run.vocab, seq_len=run.seq_len)
    train = p.spec.train.model_copy(update={"prefetch": prefetch})
    box = {}
    stop = (lambda: "SIGTERM" if box["t"].step >= stop_at else None) if stop_at else None
    box["t"] = T.Trainer(model, run, train, p.data, _Rows(), ckpt_dir / CKPT_FILE,
                         T.Context(device=torch.device("cpu")), stop_signal=stop)
    return box["t"]


RANDOM = {"kind": "mod", "capacity": 0.25, "route_every": 2, "router": "random"}


@pytest.mark.parametrize("variant", ["mod", "random"])
def test_a_run_with_prefetch_on_is_bit_identical_to_off_across_a_preemption(spec_file, tmp_path,
                                                                          variant):
    """Forced on, on the CPU, over micro-batches (drawn routing set per micro-batch row): the
    same losses to the bit as without it, also when the run is stopped by a signal at step 3
    and resumed (the thread starts at the resumed step); no thread outlives fit()."""
    variants = {"mod": {"kind": "mod", "capacity": 0.25, "route_every": 2, "causal": "predictor"},
                "random": RANDOM}
    p = runner.prepare(spec_file(batch_size=4, micro_batch_size=2, variants={variant: variants[variant]}),
                       tmp_path / "res")
    run = p.runs[0]
    (tmp_path / "off").mkdir(), (tmp_path / "on").mkdir()
    off = _trainer(p, run, tmp_path / "off", False)
    off.fit()
    first = _trainer(p, run, tmp_path / "on", True, stop_at=3)
    with pytest.raises(T.Preempted):
        first.fit()
    assert not _alive() and first.step == 3
    second = _trainer(p, run, tmp_path / "on", True)
    assert second.resume() == 3
    second.fit()
    assert not _alive()
    assert _losses(first.logger.rows + second.logger.rows) == _losses(off.logger.rows)
    assert len(off.logger.rows) > 3


def test_a_data_error_in_the_thread_fails_the_run_and_joins_the_thread(spec_file, tmp_path,
                                                                      monkeypatch):
    p = runner.prepare(spec_file(), tmp_path / "res")
    trainer = _trainer(p, p.runs[0], tmp_path, True)
    real = p.data.train_batch

    def failing(seed, step, *a):
        if step == 2:
            raise OSError(28, "No space left on device")
        return real(seed, step, *a)

    monkeypatch.setattr(p.data, "train_batch", failing)
    with pytest.raises(OSError, match="No space left"):
        trainer.fit()
    assert trainer.step == 2 and trainer.prefetcher is None and not _alive()
