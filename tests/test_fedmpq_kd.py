"""FedMPQ-KD without a Flower runtime: the distillation term, the teacher, and what stays FedMPQ's."""

import linecache

import numpy as np
import pytest
import torch
from flwr.common import RecordDict
from torch.utils.flop_counter import FlopCounterMode

from fedmpq_flwr.config import ConfigError, validate
from fedmpq_flwr.methods.fedmpq import FedMPQClient
from fedmpq_flwr.methods.fedmpq_kd import FedMPQKDClient, ema_update, teacher_round
from fedmpq_flwr.models import MODELS, build_model
from fedmpq_flwr.quant import dequantized_state, quantizable_layers, quantize_model
from fedmpq_flwr.training.distillation import distillation_loss, fold_batchnorm_, inference_teacher
from fedmpq_flwr.training.weights import communicated_keys

KD_ONLY_KEYS = {"kd_loss", "agreement", "teacher_round", "teacher_flops", "kd_alpha", "kd_gate_mean"}


def test_distillation_loss_matches_a_hand_computation() -> None:
    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 0.5, 2.0]])
    teacher = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    temperature = 2.0
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        p_t = np.exp(np.array(t_row) / temperature) / np.exp(np.array(t_row) / temperature).sum()
        p_s = np.exp(np.array(s_row) / temperature) / np.exp(np.array(s_row) / temperature).sum()
        expected += float(np.sum(p_t * (np.log(p_t) - np.log(p_s))))
    expected = expected / 2 * temperature**2  # batch mean, scaled by T^2
    assert distillation_loss(student, teacher, temperature).item() == pytest.approx(expected, rel=1e-6)
    assert distillation_loss(teacher, teacher, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_teacher_round_schedule() -> None:
    assert [teacher_round(r, 1) for r in range(1, 6)] == [0, 1, 2, 3, 4]  # the model just received
    assert [teacher_round(r, 5) for r in range(1, 12)] == [0] * 5 + [5] * 5 + [10]
    assert [teacher_round(r, 2) for r in range(1, 6)] == [0, 0, 2, 2, 4]


@pytest.mark.parametrize("name", sorted(MODELS))
def test_inference_teacher_gives_the_float_models_logits(name: str) -> None:
    torch.manual_seed(0)
    model = build_model(name, **MODELS[name].tiny)  # the same code at test size
    model.train()
    images = torch.randn(32, 3, 32, 32)
    model(images)  # move the BatchNorm running statistics away from their initial values
    model.eval()
    with torch.no_grad():
        expected = model(images)
    has_batchnorm = any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for fold in (True, False):
        teacher = inference_teacher(model, fold_batchnorm=fold)
        assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
        assert any(isinstance(m, torch.nn.BatchNorm2d) for m in teacher.modules()) == (has_batchnorm and not fold)
        with torch.inference_mode():
            logits = teacher(images.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert model.training is False and all(p.requires_grad for p in model.parameters())  # the model is untouched


class ConvBN(torch.nn.Module):
    """A convolution and a BatchNorm wired as `wiring` says: `plain` (BatchNorm right after the
    convolution), `reused_output` (the convolution's output also feeds a shortcut) or `shared_bn`
    (one BatchNorm after two convolutions)."""

    def __init__(self, wiring: str) -> None:
        super().__init__()
        self.wiring = wiring
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(3, 4, 1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.wiring == "reused_output":
            return self.bn(y) + y
        if self.wiring == "shared_bn":
            return self.bn(y) + self.bn(self.conv2(x))
        return self.bn(y)


@pytest.mark.parametrize("wiring", ["plain", "reused_output", "shared_bn"])
def test_fold_batchnorm_folds_only_a_batchnorm_that_alone_follows_its_layer(wiring: str) -> None:
    torch.manual_seed(0)
    model = ConvBN(wiring)
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        expected = model(x)
        folded = fold_batchnorm_(model)
        assert folded is model and type(model) is ConvBN  # in place, the model keeps its class
        assert isinstance(model.bn, torch.nn.Identity) == (wiring == "plain")
        torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-5)


def test_building_teachers_leaves_nothing_in_linecache() -> None:
    """A client builds a teacher every round: torch.fx's `fuse` registered the generated source of
    two `GraphModule`s per teacher in `linecache` for the life of the process."""
    model = build_model("tiny_cnn").eval()
    inference_teacher(model)
    before = len(linecache.cache)
    for _ in range(20):
        inference_teacher(model)
    assert len(linecache.cache) == before


def test_ema_update_moves_the_teacher_towards_the_dequantized_student() -> None:
    torch.manual_seed(0)
    model = build_model("tiny_cnn")
    student = quantize_model(model, {layer: 3 for layer in quantizable_layers(model)})
    teacher = inference_teacher(model, fold_batchnorm=False)
    keys = communicated_keys(model)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    target = dequantized_state(student, keys)
    ema_update(teacher, student, keys, decay=0.9)()
    for key in keys:
        torch.testing.assert_close(teacher.state_dict()[key], 0.9 * before[key] + 0.1 * target[key])
    assert any(not torch.equal(before[k], target[k]) for k in keys)  # the step did move something


def test_alpha_zero_reproduces_fedmpq_exactly(fedmpq_config, fl) -> None:
    """Same seed, kd.alpha 0: every logged number and the final global model equal FedMPQ's."""
    fedmpq, fedmpq_weights = fl.run(fedmpq_config(), rounds=2)
    kd, kd_weights = fl.run(fedmpq_config("fedmpq_kd", run_id="kd", kd={"alpha": 0.0}), rounds=2)
    for a, b in zip(fedmpq_weights, kd_weights):
        np.testing.assert_array_equal(a, b)
    assert [fl.without(r, fl.varying_keys) for r in fedmpq] == [
        fl.without(r, fl.varying_keys | KD_ONLY_KEYS) for r in kd
    ]
    assert all(0 <= c["agreement"] <= 1 and c["kd_loss"] > 0 for r in kd for c in r["clients"])


def test_kd_changes_training_but_not_what_is_sent(fedmpq_config, fl) -> None:
    """alpha 0.5: a different model, the same bits on the wire in every round, and KD diagnostics."""
    fedmpq, fedmpq_weights = fl.run(fedmpq_config(), rounds=3)
    kd, kd_weights = fl.run(fedmpq_config("fedmpq_kd", run_id="kd"), rounds=3)
    assert any(not np.array_equal(a, b) for a, b in zip(fedmpq_weights, kd_weights))
    for fedmpq_record, kd_record in zip(fedmpq, kd):
        assert kd_record["bits_up"] == fedmpq_record["bits_up"] and kd_record["bits_down"] == fedmpq_record["bits_down"]
        assert [c["bits_up"] for c in kd_record["clients"]] == [c["bits_up"] for c in fedmpq_record["clients"]]
        for client in kd_record["clients"]:
            assert client["train_loss"] == pytest.approx(
                client["task_loss"] + client["bit_loss"] + 0.5 * client["kd_loss"], rel=1e-5
            )
            assert client["grad_norm"] > 0 and 0 <= client["agreement"] <= 1
        for key in ("task_loss", "bit_loss", "kd_loss", "agreement", "grad_norm"):
            assert kd_record[key] == pytest.approx(np.mean([c[key] for c in kd_record["clients"]]))
        assert "kd_loss" not in fedmpq_record and "grad_norm" in fedmpq_record


def test_refresh_every_k_keeps_the_older_teacher_on_the_node(fedmpq_config, fl) -> None:
    config = fedmpq_config("fedmpq_kd", kd={"refresh_every": 2})
    # partition 0 takes part in every round; partition 1 misses round 3 (a refresh round)
    participants = [[0, 1], [0, 1], [0], [0, 1]]
    records, _ = fl.run(config, rounds=4, participants=participants)
    teacher_rounds = [{c["partition_id"]: c["teacher_round"] for c in r["clients"]} for r in records]
    assert teacher_rounds == [{0: 0, 1: 0}, {0: 0, 1: 0}, {0: 2}, {0: 2, 1: 3}]


def test_kept_teacher_is_the_old_global_model(fedmpq_config, fl) -> None:
    config = fedmpq_config("fedmpq_kd", kd={"refresh_every": 3})
    strategy = fl.strategy(config)
    initial = [a.copy() for a in strategy.latest_parameters]
    state = RecordDict()
    fl.fit_result(FedMPQKDClient(config, 0, 4, state), strategy, 0, server_round=1)
    strategy.latest_parameters = [a + 1.0 for a in initial]  # a different global model in round 2
    res = fl.fit_result(FedMPQKDClient(config, 0, 4, state), strategy, 0, server_round=2)
    assert res.metrics["teacher_round"] == 0
    kept = state["kd.teacher.partition_0"].to_numpy_ndarrays()
    for a, b in zip(kept, initial):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("alpha", -0.5, r"key 'kd.alpha': value -0.5 is out of range; expected a number in \[0, inf\)"),
        ("temperature", 0, r"key 'kd.temperature': value 0.0 is out of range"),
        ("teacher", "ema", r"key 'kd.teacher': value 'ema' is not allowed; choose one of frozen, updating"),
        ("ema_decay", 1.5, r"key 'kd.ema_decay': value 1.5 is out of range; expected a number in \[0, 1\]"),
        ("refresh_every", 0, r"key 'kd.refresh_every': value 0 is out of range"),
    ],
)
def test_kd_keys_are_validated(key: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate({"strategy": {"name": "fedmpq_kd"}, "kd": {key: value}})


def test_kd_defaults_are_the_main_method() -> None:
    kd = validate({"strategy": {"name": "fedmpq_kd"}})["kd"]
    assert kd == {
        "alpha": 0.5,
        "temperature": 2.0,
        "teacher": "frozen",
        "ema_decay": 0.99,
        "refresh_every": 1,
        "history": 5,
        "schedule": "constant",
        "schedule_rounds": 0,
        "gate": "none",
    }


def test_teacher_flops_are_counted_apart_from_the_students(fedmpq_config, fl) -> None:
    """FLOPs of the round: the teacher's forward per step times the steps, the rest the student's."""
    config = fedmpq_config("fedmpq_kd")
    strategy = fl.strategy(config)
    kd = fl.fit_result(FedMPQKDClient(config, 1, 4), strategy, 1).metrics
    fedmpq = fl.fit_result(FedMPQClient(config, 1, 4), strategy, 1).metrics
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        build_model("tiny_cnn")(torch.zeros(config["train"]["batch_size"], 3, 32, 32))
    assert kd["steps"] == fedmpq["steps"] == 2
    assert kd["teacher_flops"] == 2 * counter.get_total_flops() > 0  # the folded BatchNorm costs no counted FLOPs
    assert kd["train_flops"] == fedmpq["train_flops"] > kd["teacher_flops"]


def test_history_teacher_is_sent_by_the_server(fedmpq_config, fl) -> None:
    """kd.teacher history (kd.history 2): round 1 is FedMPQ's exactly (no teacher yet); from round 2
    the clients distil from the server's average of the last global models, sent after the global
    model (an extra 32 bits per float down), FedGKD's code."""
    fedmpq, _ = fl.run(fedmpq_config(train={"num_rounds": 3}), rounds=3)
    config = fedmpq_config("fedmpq_kd", run_id="hist", kd={"teacher": "history", "history": 2}, train={"num_rounds": 3})
    kd, _ = fl.run(config, rounds=3)
    ignored = fl.varying_keys | KD_ONLY_KEYS
    assert fl.without(kd[0], ignored) == fl.without(fedmpq[0], ignored)
    assert kd[0]["teacher_flops"] == 0 and "kd_loss" not in kd[0]
    floats = sum(a.size for a in fl.strategy(config).latest_parameters)
    for server_round, (a, b) in enumerate(zip(fedmpq[1:], kd[1:]), start=2):
        sent = 0 if server_round == 2 else len(b["clients"]) * 32 * floats  # round 2: the received model
        assert b["bits_down"] == a["bits_down"] + sent
        assert all(c["teacher_round"] == server_round - 1 and c["kd_loss"] > 0 for c in b["clients"])
        assert b["teacher_flops"] > 0


def test_frozen_and_updating_teachers_send_nothing_more(fedmpq_config, fl) -> None:
    for teacher in ("frozen", "updating"):
        strategy = fl.strategy(fedmpq_config("fedmpq_kd", kd={"teacher": teacher}))
        assert strategy.history is None
        assert strategy.fit_arrays(3, strategy.latest_parameters) is strategy.latest_parameters
        assert set(strategy.fit_config(3, 0)) == {"server_round", "bits"}  # FedMPQ's instructions


def test_history_teacher_is_rebuilt_every_round() -> None:
    with pytest.raises(ConfigError, match=r"key 'kd.refresh_every': value 2 needs kd.teacher frozen or updating"):
        validate({"strategy": {"name": "fedmpq_kd"}, "kd": {"teacher": "history", "refresh_every": 2}})
