"""Strategies: the seam between the fit loop and its devices. The Trainer's backward, every optimizer
step and every checkpoint file go through trainer.strategy; one-process collectives are identities;
TrainerConfig checks the arguments; the LoopPosition says where a resumed fit starts."""

import dataclasses
import inspect

import numpy as np
import pytest
from trainer_helpers import Regressor, loader, quiet, regression_data

import dutycycle as dc
from dutycycle.strategies import STRATEGIES, SingleDeviceStrategy, Strategy
from dutycycle.trainer import LoopPosition, Trainer, TrainerConfig, seed_everything


class Recording(SingleDeviceStrategy):
    """A user's strategy: records what the Trainer asks of it, then does the single-device thing."""

    def __init__(self):
        super().__init__("cpu")
        self.calls = []

    def setup(self, trainer):
        self.calls.append("setup")
        super().setup(trainer)

    def backward(self, loss, *args, **kwargs):
        self.calls.append("backward")
        super().backward(loss, *args, **kwargs)

    def optimizer_step(self, optimizer, closure=None, model=None, **kwargs):
        self.calls.append("optimizer_step")
        return super().optimizer_step(optimizer, closure, model, **kwargs)

    def save_checkpoint(self, checkpoint, filepath, storage_options=None):
        self.calls.append(("save_checkpoint", str(filepath)))
        super().save_checkpoint(checkpoint, filepath, storage_options)

    def load_checkpoint(self, checkpoint_path):
        self.calls.append(("load_checkpoint", str(checkpoint_path)))
        return super().load_checkpoint(checkpoint_path)

    def remove_checkpoint(self, filepath):
        self.calls.append(("remove_checkpoint", str(filepath)))
        super().remove_checkpoint(filepath)

    def teardown(self):
        self.calls.append("teardown")


@pytest.fixture
def data():
    return regression_data(32)


def test_importable_and_the_defaults():
    assert dc.strategies.SingleDeviceStrategy is SingleDeviceStrategy
    assert {"auto", "single_device", "ddp", "zero1", "zero2", "parameter_server"} <= set(STRATEGIES)
    for name in ("auto", "single_device"):
        t = Trainer(strategy=name, accelerator="cpu", logger=False)
        assert type(t.strategy) is SingleDeviceStrategy and t.strategy.root_device == dc.device("cpu")
        assert t.root_device == dc.device("cpu")
    s = SingleDeviceStrategy()
    t = Trainer(strategy=s, logger=False)
    assert t.strategy is s and t.accelerator == "cpu"
    assert (t.global_rank, t.local_rank, t.node_rank, t.world_size, t.is_global_zero) == (0, 0, 0, 1, True)
    assert repr(s) == "SingleDeviceStrategy(root_device=cpu)"


def test_bad_strategies():
    known = r"strategy='ddp_spawn' is not known; known strategies: \['auto', 'ddp'"
    with pytest.raises(ValueError, match=known):
        Trainer(strategy="ddp_spawn")
    with pytest.raises(TypeError, match="strategy must be a string .* or a dutycycle.strategies.Strategy, got int"):
        Trainer(strategy=3)
    with pytest.raises(ValueError, match="ask for more than one process"):
        Trainer(strategy=SingleDeviceStrategy(), devices=2, accelerator="cpu")
    with pytest.raises(TypeError, match="abstract"):
        Strategy()  # root_device is the one thing a strategy must say
    with pytest.raises(ValueError, match="unknown device type"):
        SingleDeviceStrategy("tpu")
    if not dc.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            SingleDeviceStrategy("cuda")
    else:
        with pytest.raises(ValueError, match="does not match strategy"):
            Trainer(strategy=SingleDeviceStrategy("cuda"), accelerator="cpu")


def test_one_process_collectives():
    s = SingleDeviceStrategy()
    t = dc.tensor([1.0, 2.0])
    for op in ("mean", "avg", "sum", "max", "min", "SUM"):
        assert s.reduce(t, reduce_op=op) is t
    assert s.reduce(3.5) == 3.5
    with pytest.raises(ValueError, match=r"reduce_op='median' is not known; expected one of \['mean'"):
        s.reduce(t, reduce_op="median")
    obj = {"a": [1, 2]}
    assert s.broadcast(obj) is obj and s.broadcast(obj, src=0) is obj
    with pytest.raises(ValueError, match="src must be 0"):
        s.broadcast(obj, src=1)
    assert s.barrier() is None and s.barrier("name") is None
    assert s.all_gather(t) is t
    assert s.reduce_boolean_decision(1) is True and s.reduce_boolean_decision(0) is False
    with pytest.raises(RuntimeError, match=r"backward\(\) needs a trainer"):
        s.backward(t)


def test_a_custom_strategy_sees_backward_steps_and_checkpoint_writes(data, tmp_path):
    from dutycycle.callbacks import ModelCheckpoint

    x, y = data
    s = Recording()
    mc = ModelCheckpoint(dirpath=tmp_path / "ck", save_top_k=1)
    trainer = Trainer(**quiet(strategy=s, max_epochs=2, accumulate_grad_batches=2, callbacks=[mc],
                              enable_checkpointing=True))  # fmt: skip
    trainer.fit(Regressor(), loader(x, y))  # 4 batches per epoch, a step every 2
    assert trainer.strategy is s and trainer.global_step == 4
    counts = {c: s.calls.count(c) for c in ("setup", "backward", "optimizer_step", "teardown")}
    assert counts == {"setup": 1, "backward": 8, "optimizer_step": 4, "teardown": 1}
    saves = [c[1] for c in s.calls if isinstance(c, tuple) and c[0] == "save_checkpoint"]
    removes = [c[1] for c in s.calls if isinstance(c, tuple) and c[0] == "remove_checkpoint"]
    assert [p.rsplit("/", 1)[1] for p in saves] == ["epoch=0-step=2.ckpt", "epoch=1-step=4.ckpt"]
    assert removes == [saves[0]]  # top-1: the older one goes, through the strategy
    # resume reads through the strategy too
    s2 = Recording()
    t2 = Trainer(**quiet(strategy=s2, max_epochs=3))
    t2.fit(Regressor(), loader(x, y), ckpt_path=saves[1])
    assert ("load_checkpoint", saves[1]) in s2.calls and t2.global_step == 8
    # and so does a checkpoint the user writes
    t2.save_checkpoint(tmp_path / "mine.ckpt")
    assert s2.calls[-1] == ("save_checkpoint", str(tmp_path / "mine.ckpt"))


def test_gradient_clipping_goes_through_the_strategy(data):
    """LightningModule.clip_gradients asks strategy.clip_gradients (the seam a sharded strategy uses to
    clip its reduced gradients); the base strategy clips the local .grad, as before."""
    x, y = data
    seen = []

    class Clipping(SingleDeviceStrategy):
        def clip_gradients(self, optimizer, gradient_clip_val, gradient_clip_algorithm="norm"):
            seen.append((gradient_clip_val, gradient_clip_algorithm))
            out = super().clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)
            norm = np.sqrt(sum(float((p.grad * p.grad).sum()) for g in optimizer.param_groups for p in g["params"]))
            assert norm <= gradient_clip_val * (1 + 1e-5)
            return out

    trainer = Trainer(**quiet(strategy=Clipping(), max_steps=3, gradient_clip_val=1e-3))
    trainer.fit(Regressor(), loader(x, y))
    assert seen == [(1e-3, "norm")] * 3
    with pytest.raises(ValueError, match="gradient_clip_algorithm 'l3'"):
        Regressor().clip_gradients(dc.optim.SGD([dc.nn.Parameter(dc.ones(2))], lr=0.1), 1.0, "l3")


def test_optimizer_step_override_and_manual_optimization_go_through_the_strategy(data):
    x, y = data
    seen = []

    class Override(Regressor):
        def optimizer_step(self, epoch, batch_idx, optimizer, optimizer_closure=None):
            seen.append(isinstance(optimizer, dc.optim.SGD))  # the wrapper still looks like the optimizer
            optimizer.step(closure=optimizer_closure)  # as Lightning's docs write it

    s = Recording()
    Trainer(**quiet(strategy=s, max_epochs=1)).fit(Override(), loader(x, y))
    assert seen == [True] * 4 and s.calls.count("optimizer_step") == 4 and s.calls.count("backward") == 4

    class Manual(Regressor):
        def __init__(self):
            super().__init__()
            self.automatic_optimization = False

        def training_step(self, batch, batch_idx):
            opt = self.optimizers()
            opt.zero_grad()
            loss = ((self(batch[0]) - batch[1]) ** 2).mean()
            self.manual_backward(loss)
            opt.step()
            return loss

    s = Recording()
    t = Trainer(**quiet(strategy=s, max_epochs=1))
    t.fit(Manual(), loader(x, y))
    assert t.global_step == 4 and s.calls.count("optimizer_step") == 4 and s.calls.count("backward") == 4


def test_a_strategy_that_changes_the_step_changes_training(data):
    """The seam is real: a strategy that halves every gradient before the step trains like lr/2."""
    x, y = data

    class HalfGrad(SingleDeviceStrategy):
        def optimizer_step(self, optimizer, closure=None, model=None, **kwargs):
            def halved():
                loss = closure()
                for g in optimizer.param_groups:
                    for p in g["params"]:
                        if p.grad is not None:
                            p.grad.mul_(0.5)
                return loss

            return super().optimizer_step(optimizer, halved, model, **kwargs)

    seed_everything(0)
    a, b = Regressor(lr=0.1), Regressor(lr=0.05)
    b.load_state_dict(a.state_dict())
    Trainer(**quiet(strategy=HalfGrad(), max_epochs=2)).fit(a, loader(x, y))
    Trainer(**quiet(max_epochs=2)).fit(b, loader(x, y))
    for pa, pb in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(pa.detach().numpy(), pb.detach().numpy(), rtol=1e-6, atol=1e-7)


# ---- TrainerConfig ------------------------------------------------------------------------------
def test_trainer_config_has_the_trainers_arguments_and_defaults():
    params = inspect.signature(Trainer.__init__).parameters
    trainer_args = {n: p.default for n, p in params.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
    config_args = {f.name: f.default for f in dataclasses.fields(TrainerConfig) if f.init}
    assert trainer_args == config_args


@pytest.mark.parametrize(
    "kwargs, exc, match",
    [
        ({"max_epoch": 3}, TypeError, "unexpected keyword argument 'max_epoch'; did you mean 'max_epochs'"),
        ({"frobnicate": 1}, TypeError, "unexpected keyword argument 'frobnicate'$"),
        ({"num_devices": 1}, TypeError, "unexpected keyword argument 'num_devices'"),  # resolved, not an argument
        ({"accelerator": "tpu"}, ValueError, "accelerator='tpu' is not known"),
        ({"devices": "x"}, ValueError, "devices='x' is not an int"),
        ({"precision": "8-bit"}, ValueError, "precision='8-bit' is not known"),
        ({"precision": "transformer-engine"}, ValueError, "not supported yet"),
        ({"fast_dev_run": -1}, ValueError, "fast_dev_run=-1 must be a bool or an int >= 0"),
        ({"max_time": "1:00"}, ValueError, "expected the string format 'DD:HH:MM:SS'"),
        ({"max_time": 5}, TypeError, "max_time must be"),
        ({"max_steps": -2}, ValueError, "max_steps must be -1"),
        ({"limit_train_batches": 1.5}, ValueError, r"limit_train_batches=1.5 as a float must be in \[0.0, 1.0\]"),
        ({"limit_val_batches": True}, TypeError, "limit_val_batches must be an int or a float, got a bool"),
        ({"limit_test_batches": -1}, ValueError, "limit_test_batches=-1 must be >= 0"),
        ({"limit_predict_batches": "all"}, TypeError, "limit_predict_batches must be an int or a float, got str"),
        ({"val_check_interval": 0.0}, ValueError, r"must be in \(0.0, 1.0\]"),
        ({"val_check_interval": 0}, ValueError, "must be >= 1 as an int"),
        ({"check_val_every_n_epoch": 0}, ValueError, "check_val_every_n_epoch must be None or an int >= 1"),
        ({"accumulate_grad_batches": 0}, ValueError, "accumulate_grad_batches must be an int >= 1"),
        ({"gradient_clip_algorithm": "l1"}, ValueError, "gradient_clip_algorithm='l1' is not one of"),
        ({"deterministic": "yes"}, ValueError, "deterministic must be None, a bool or 'warn'"),
    ],
)
def test_trainer_config_errors_match_the_trainers(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        TrainerConfig.from_kwargs(kwargs)
    with pytest.raises(exc, match=match):
        Trainer(**kwargs)


def test_trainer_config_resolves_auto_values():
    c = TrainerConfig(accelerator="cpu", max_steps=10, fast_dev_run=False, val_check_interval=None)
    assert (c.accelerator, c.max_epochs, c.max_steps, c.val_check_interval) == ("cpu", -1, 10, 1.0)
    assert isinstance(c.strategy, SingleDeviceStrategy) and c.num_devices == 1
    c = TrainerConfig(accelerator="cpu", fast_dev_run=3)
    assert (c.fast_dev_run_batches, c.max_steps, c.limit_val_batches, c.num_sanity_val_steps) == (3, 3, 3, 0)
    c = TrainerConfig(max_time={"minutes": 2})
    assert c.max_time.total_seconds() == 120 and c.max_epochs == -1
    t = Trainer(accelerator="cpu", max_steps=10, logger=False)
    assert t.config.max_epochs == t.max_epochs == -1


# ---- the loop position -----------------------------------------------------------------------------
def test_loop_position_unit():
    pos = LoopPosition()
    assert pos.start(current_epoch=0) == (0, 0) and not pos.skip_sanity_check
    pos.batch_done(epoch=0, batch_idx=2, num_batches=5)
    assert (pos.next_epoch, pos.next_batch) == (0, 3)
    pos.batch_done(epoch=0, batch_idx=4, num_batches=5)
    assert (pos.next_epoch, pos.next_batch) == (1, 0)

    class FakeTrainer:  # what load_state_dict touches
        global_step = current_epoch = 0
        fit_loop = type("F", (), {"epoch_loop": type("E", (), {"total_batch_idx": 0})()})()
        callback_metrics, logged_metrics, root_device = {}, {}, dc.device("cpu")

    ckpt = {"loops": {"fit_loop": {"current_epoch": 1, "global_step": 8, "next_epoch": 1, "next_batch": 3}}}
    pos = LoopPosition()
    ft = FakeTrainer()
    pos.load_state_dict(ft, ckpt)
    assert (ft.global_step, ft.current_epoch) == (8, 1)
    assert pos.resuming and pos.skip_sanity_check and pos.start(current_epoch=1) == (1, 3)
    restored = pos.begin_epoch(skip=3)
    assert restored is not None and not pos.resuming  # consumed by the first epoch only
    it = pos.epoch_iterator(list("abcdefg"), 3, restored)  # no loader state: replay and drop 3
    assert list(it) == list("defg") and pos.batches_done == 3


@pytest.mark.parametrize("kind", ["dataloader", "plain_list"])
def test_mid_epoch_resume_skips_exactly_the_batches_done(tmp_path, kind):
    """Stop after 3 of 5 batches of epoch 1, resume: the resumed run sees epoch 1's batches 3 and 4
    (the same data an uninterrupted run saw there), then all of epoch 2."""
    x, y = regression_data(40)

    class Seen(Regressor):
        def __init__(self):
            super().__init__()
            self.seen = []

        def training_step(self, batch, batch_idx):
            self.seen.append((self.current_epoch, batch_idx, float(batch[0][0, 0].item())))
            return super().training_step(batch, batch_idx)

    def run(max_steps=-1, ckpt_path=None, sanity=0):
        seed_everything(7)
        if kind == "dataloader":  # shuffled, with a state_dict: resume loads the loader's position
            data = loader(x, y, shuffle=True)
        else:  # no state_dict: resume replays the epoch and drops the batches already done
            data = [(x[i : i + 8], y[i : i + 8]) for i in range(0, 40, 8)]
        model = Seen()
        vals = loader(x[:8], y[:8])
        t = Trainer(**quiet(max_epochs=3, max_steps=max_steps, num_sanity_val_steps=sanity))
        t.fit(model, data, vals, ckpt_path=ckpt_path)
        return model, t

    full, _ = run()
    part, pt = run(max_steps=8)  # 5 batches of epoch 0, 3 of epoch 1
    assert pt.position.start(pt.current_epoch) == (pt.current_epoch, 0)  # not resuming: no skip
    assert (pt.position.next_epoch, pt.position.next_batch) == (1, 3)
    pt.save_checkpoint(tmp_path / "mid.ckpt")
    resumed, rt = run(ckpt_path=tmp_path / "mid.ckpt", sanity=2)
    assert [s[:2] for s in resumed.seen] == [(1, 3), (1, 4)] + [(2, i) for i in range(5)]
    assert resumed.seen == full.seen[8:]  # the same batches, in the same order
    assert rt.global_step == 15 and not rt.sanity_checking
