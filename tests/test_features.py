"""White-box distillation through the trainer: feature names, auto pairs, connectors (optimizer, checkpoints,
resume, never in the saved student), and the feature term's effect in a short run."""

from pathlib import Path

import pytest
import torch
from datasets import Dataset
from safetensors.torch import load_file
from transformers import BertConfig, BertForSequenceClassification, HfArgumentParser, TrainerCallback

from hf_kd import DistillationConfig, DistillationTrainer
from hf_kd.features.connectors import make_connector
from hf_kd.features.names import FeatureCollector, parse_feature, relative_depth
from hf_kd.models import model_from_preset
from hf_kd.training.feature_term import CONNECTORS_NAME


def mlps():
    torch.manual_seed(0)
    return model_from_preset("mnist-mlp-teacher"), model_from_preset("mnist-mlp-student")


def images(n=128, channels=1, size=28, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, channels, size, size, generator=g)
    return Dataset.from_dict({"pixel_values": x.numpy(), "labels": torch.randint(0, 10, (n,), generator=g).numpy()})


def config(tmp_path, **overrides):
    defaults = dict(
        output_dir=str(tmp_path / "out"), per_device_train_batch_size=32, num_train_epochs=1, learning_rate=1e-3,
        logging_steps=1, save_strategy="no", report_to="none", seed=0, dataloader_pin_memory=False, disable_tqdm=True,
        feature_pairs=["auto"],
    )  # fmt: skip
    defaults.update(overrides)
    return DistillationConfig(**defaults)


def trainer_for(tmp_path, teacher, student, data, **overrides):
    args = config(tmp_path, **overrides)
    return DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=data.with_format("torch"))


# ------------------------------------------------------------------------------------------------------------------
# settings and names


def test_feature_settings_parse_from_the_command_line_and_validate(tmp_path):
    (args,) = HfArgumentParser(DistillationConfig).parse_args_into_dataclasses(
        ["--output_dir", str(tmp_path), "--report_to", "none", "--feature_pairs", "hidden_states.1:hidden_states.3",
         "convs.0@input:convs.1", "--feature_loss", "overhaul", "--feature_connector", "conv"]
    )  # fmt: skip
    assert args.feature_pairs == ["hidden_states.1:hidden_states.3", "convs.0@input:convs.1"]
    assert (args.feature_loss, args.feature_connector, args.feature_weight) == ("overhaul", "conv", 1e-3)
    assert parse_feature("convs.0@input").of_input and parse_feature("hidden_states.-1").index == -1
    for field, value, message in [
        ("feature_loss", "fitnet", "feature_loss must be one of"),
        ("feature_connector", "mlp", "feature_connector must be one of"),
        ("feature_pairs", ["hidden_states.1"], "'hidden_states.1' is not a 'student_feature:teacher_feature'"),
        ("feature_pairs", ["a b:c"], "'a b' is not a feature name"),
        ("feature_pairs", ["auto", "a:b"], "'auto' stands alone"),
        ("feature_weight", -1.0, "feature_weight must be a finite number >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            DistillationConfig(output_dir=str(tmp_path), report_to="none", **{"feature_pairs": ["auto"], field: value})


def test_a_missing_feature_names_the_model_and_lists_its_features(tmp_path):
    teacher, student = mlps()
    with pytest.raises(ValueError) as error:
        trainer_for(tmp_path, teacher, student, images(16), feature_pairs=["hidden_states.9:hidden_states.3"])
    message = str(error.value)
    assert "the student (MLPForImageClassification) has no feature 'hidden_states.9'" in message
    assert "hidden_states.0 ... hidden_states.2" in message and "classifier" in message
    with pytest.raises(ValueError, match=r"the teacher \(MLPForImageClassification\) has no feature 'hidden_layers.7'.*hidden_layers\.0"):
        trainer_for(tmp_path, teacher, student, images(16), feature_pairs=["hidden_states.1:hidden_layers.7"])


def test_connectors_that_cannot_match_name_both_shapes():
    with pytest.raises(ValueError, match=r"equal spatial size.*\(16, 8, 8\).*\(32, 4, 4\)"):
        make_connector((16, 8, 8), (32, 4, 4), "hint")
    with pytest.raises(ValueError, match=r"No connector maps.*\(16, 8, 8\).*\(100,\).*both vectors, token states or maps"):
        make_connector((16, 8, 8), (100,), "hint")
    with pytest.raises(ValueError, match=r"identity.*same shape.*\(100,\).*\(400,\)"):
        make_connector((100,), (400,), "hint", "identity")
    assert isinstance(make_connector((100,), (100,), "hint"), torch.nn.Identity)
    conv = make_connector((16, 8, 8), (32, 8, 8), "overhaul")  # 1x1 conv (no bias) + BN, Heo et al.
    assert [type(m).__name__ for m in conv] == ["Conv2d", "BatchNorm2d"] and conv[0].bias is None
    assert isinstance(make_connector((7, 16), (7, 32), "hidden_mse"), torch.nn.Linear)


def test_module_hooks_read_outputs_and_inputs_and_are_removed(tmp_path):
    teacher, student = mlps()
    collector = FeatureCollector(student, [parse_feature("classifier@input"), parse_feature("hidden_states.2")], "s")
    x = torch.randn(4, 1, 28, 28)
    with collector.active():
        outputs = student(pixel_values=x)
    assert outputs.hidden_states is None  # requested for the collector only: the caller's outputs are unchanged
    features = collector.take()
    torch.testing.assert_close(features["classifier@input"], features["hidden_states.2"])
    assert not student._forward_hooks and not student._forward_pre_hooks
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())


# ------------------------------------------------------------------------------------------------------------------
# auto pairs


def test_relative_depth_is_tinyberts_uniform_mapping():
    assert [relative_depth(i, 4, 13, with_embeddings=True) for i in range(4)] == [0, 4, 8, 12]  # k = 4
    assert [relative_depth(i, 3, 12, with_embeddings=False) for i in range(3)] == [3, 7, 11]  # i*k + k - 1


def test_auto_pairs_on_the_reference_mlps_and_cnns(tmp_path):
    teacher, student = mlps()
    trainer = trainer_for(tmp_path, teacher, student, images(16), feature_loss="overhaul")
    assert trainer.feature_distillation.term.describe() == ["hidden_states.1:hidden_states.3"]  # pre-ReLU 100 <-> pre-ReLU 100
    torch.manual_seed(0)
    cnn = {"num_channels": 1, "image_size": 28}
    t_cnn, s_cnn = model_from_preset("cifar10-cnn-teacher", **cnn), model_from_preset("cifar10-cnn-student", **cnn)
    trainer = trainer_for(tmp_path, t_cnn, s_cnn, images(16), feature_loss="hint")
    # Student conv0 (16, 28, 28), conv1 (16, 14, 14), fc (256,) at the teacher's relative depth: conv1 (64, 28, 28),
    # conv2 (64, 14, 14), fc (512,); each through a connector sized by the probe.
    assert trainer.feature_distillation.term.describe() == [
        "hidden_states.1:hidden_states.3", "hidden_states.3:hidden_states.5", "hidden_states.5:hidden_states.9"
    ]  # fmt: skip
    kinds = [(type(c).__name__, tuple(c.weight.shape)) for c in trainer.feature_distillation.term.connectors.connectors]
    assert kinds == [("Conv2d", (64, 16, 1, 1)), ("Conv2d", (64, 16, 1, 1)), ("Linear", (512, 256))]
    attention = trainer_for(tmp_path, t_cnn, s_cnn, images(16), feature_loss="attention")  # maps only, no connector
    assert attention.feature_distillation.term.describe() == ["hidden_states.1:hidden_states.3", "hidden_states.3:hidden_states.5"]
    assert not attention.feature_distillation.term.connectors.has_parameters()


def test_auto_pairs_on_two_tiny_berts(tmp_path):
    def bert(layers, width, seed, attn_implementation="eager"):
        torch.manual_seed(seed)
        cfg = BertConfig(vocab_size=50, hidden_size=width, num_hidden_layers=layers, num_attention_heads=2,
                         intermediate_size=2 * width, max_position_embeddings=16, num_labels=3,
                         attn_implementation=attn_implementation)  # fmt: skip
        return BertForSequenceClassification(cfg)

    g = torch.Generator().manual_seed(0)
    data = Dataset.from_dict({"input_ids": torch.randint(1, 50, (16, 8), generator=g).numpy(),
                              "attention_mask": torch.ones(16, 8, dtype=torch.long).numpy(),
                              "labels": torch.randint(0, 3, (16,), generator=g).numpy()})  # fmt: skip
    teacher, student = bert(4, 32, 0), bert(2, 16, 1)
    hidden = trainer_for(tmp_path, teacher, student, data, feature_loss="hidden_mse", max_steps=1)
    assert hidden.feature_distillation.term.describe() == ["hidden_states.0:hidden_states.0", "hidden_states.1:hidden_states.2",
                                               "hidden_states.2:hidden_states.4"]  # fmt: skip
    assert all(tuple(c.weight.shape) == (32, 16) for c in hidden.feature_distillation.term.connectors.connectors)
    hidden.train()
    assert hidden.state.log_history[0]["loss_feature"] > 0
    # Loaded with SDPA (transformers' default), which returns no attention maps: both are switched to eager.
    teacher16, sdpa_student = bert(4, 16, 0, "sdpa"), bert(2, 16, 1, "sdpa")
    attention = trainer_for(tmp_path, teacher16, sdpa_student, data, feature_loss="attention_mse", max_steps=1)
    assert attention.feature_distillation.term.describe() == ["attentions.0:attentions.1", "attentions.1:attentions.3"]
    assert teacher16.config._attn_implementation == sdpa_student.config._attn_implementation == "eager"
    attention.train()
    assert attention.state.log_history[0]["loss_feature"] > 0


# ------------------------------------------------------------------------------------------------------------------
# connectors in training, checkpoints and resume


def test_connectors_train_and_are_checkpointed_but_never_saved_with_the_student(tmp_path):
    teacher, student = mlps()
    pairs = ["hidden_states.2:hidden_states.2"]  # student 100 -> teacher 400: a Linear connector
    args = dict(feature_pairs=pairs, num_train_epochs=2, save_strategy="steps", save_steps=4, logging_steps=4)
    trainer = trainer_for(tmp_path, teacher, student, images(128), **args)
    connector = trainer.feature_distillation.term.connectors.connectors[0]
    before = connector.weight.detach().clone()
    trainer.train()
    assert not torch.equal(connector.weight, before)  # in the optimizer
    checkpoint = Path(trainer.args.output_dir) / "checkpoint-4"
    saved = load_file(checkpoint / CONNECTORS_NAME)
    assert set(saved) == {"connectors.0.weight", "connectors.0.bias"}
    assert set(load_file(checkpoint / "model.safetensors")) == set(student.state_dict())
    trainer.save_model(str(tmp_path / "final"))
    final = load_file(tmp_path / "final" / "model.safetensors")
    assert set(final) == set(student.state_dict())
    assert not any(value.shape == connector.weight.shape for value in final.values())
    assert not list((tmp_path / "final").glob("feature_connectors*"))

    # Resume from the mid-run checkpoint: connectors restored bit for bit, then the same end state.
    torch.manual_seed(5)
    resumed_student = model_from_preset("mnist-mlp-student")
    resumed = trainer_for(tmp_path, teacher, resumed_student, images(128), **args)
    resumed._load_from_checkpoint(str(checkpoint))
    restored = resumed.feature_distillation.term.connectors.state_dict()
    assert all(torch.equal(restored[key], saved[key]) for key in saved)
    resumed.train(resume_from_checkpoint=str(checkpoint))
    for key, value in student.state_dict().items():
        torch.testing.assert_close(resumed_student.state_dict()[key], value, rtol=0, atol=0, msg=key)
    end = resumed.feature_distillation.term.connectors.state_dict()
    for key, value in trainer.feature_distillation.term.connectors.state_dict().items():
        torch.testing.assert_close(end[key], value, rtol=0, atol=0, msg=key)


class ConnectorGradients(TrainerCallback):
    """Records, just before each optimizer step (after clipping), the connectors' and the student's gradients."""

    def __init__(self, connectors, student):
        self.connectors, self.student, self.steps = connectors, student, []

    def on_pre_optimizer_step(self, args, state, control, **kwargs):
        grads = lambda module: [p.grad.detach().clone() for p in module.parameters()]  # noqa: E731
        self.steps.append((grads(self.connectors), grads(self.student)))


def test_connector_gradients_are_zeroed_each_step_and_clipped_with_the_students(tmp_path):
    teacher, student = mlps()
    same_batch = Dataset.from_dict({k: v[:1] * 4 for k, v in images(1).to_dict().items()})  # one example, 4 times
    trainer = trainer_for(
        tmp_path, teacher, student, same_batch, feature_pairs=["hidden_states.2:hidden_states.2"],
        per_device_train_batch_size=4, num_train_epochs=3, learning_rate=0.0, max_grad_norm=1e-3,
    )  # fmt: skip
    record = ConnectorGradients(trainer.feature_distillation.term.connectors, student)
    trainer.add_callback(record)
    trainer.train()
    assert len(record.steps) == 3
    # lr 0 and the same batch: every step's gradients are the first step's, not their running sum.
    first_connectors, first_student = record.steps[0]
    for connectors, student_grads in record.steps[1:]:
        for grad, first in zip(connectors + student_grads, first_connectors + first_student):
            torch.testing.assert_close(grad, first)
    # One norm over the student's and the connectors' gradients, clipped to max_grad_norm (unclipped: ~1e-1).
    total = torch.linalg.vector_norm(torch.stack([g.norm() for g in first_connectors + first_student]))
    assert total.item() == pytest.approx(1e-3, rel=1e-3)
    assert torch.linalg.vector_norm(torch.stack([g.norm() for g in first_connectors])) > 1e-5


def test_the_feature_loss_falls_by_half_in_a_short_run(tmp_path):
    _, student = mlps()
    torch.manual_seed(2)
    teacher = model_from_preset("mnist-mlp-student")
    trainer = trainer_for(
        # Pre-ReLU to pre-ReLU of a teacher of the student's shape: a linear map of the input that the student's
        # first layer can reach exactly, so the term must fall.
        tmp_path, teacher, student, images(256), feature_pairs=["hidden_states.1:hidden_states.1"],
        learning_rate=3e-3, num_train_epochs=4, alpha=1.0, logging_steps=1, feature_weight=10.0,
    )  # fmt: skip
    trainer.train()
    losses = [entry["loss_feature"] for entry in trainer.state.log_history if "loss_feature" in entry]
    assert losses[-1] <= 0.5 * losses[0], losses
    # Hooks are gone once the step is over; evaluation still computes the term, predictions are the logits alone.
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in student.modules())
    metrics = trainer.evaluate(images(64, seed=3).with_format("torch"))
    assert "eval_loss_feature" in metrics
    assert trainer.predict(images(8, seed=4).with_format("torch")).predictions.shape == (8, 10)


# ------------------------------------------------------------------------------------------------------------------
# teacher features cached with the precomputed logits


class CountCalls:
    """A forward pre-hook that counts the model's forwards."""

    def __init__(self, model):
        self.count = 0
        self.handle = model.register_forward_pre_hook(self)

    def __call__(self, module, args):
        self.count += 1


@pytest.mark.parametrize(
    "loss, pairs",
    # Two pairs, two cached columns; and the overhaul (auto: pre-ReLU 100 <-> 100) with its margins measured once.
    [("hint", ["hidden_states.1:hidden_states.3", "hidden_states.2:hidden_states.2"]), ("overhaul", ["auto"])],
)
def test_vector_features_cached_with_the_logits_train_the_student_the_live_teacher_does(tmp_path, caplog, loss, pairs):
    import logging

    data = images(128)
    # teacher_batch_size = the training batch size: the precompute's matmuls have the live run's shapes (and both
    # runs measure the overhaul margins over the same batches).
    settings = dict(feature_loss=loss, feature_pairs=pairs, num_train_epochs=2, logging_steps=4, teacher_batch_size=32)
    teacher, student = mlps()
    with caplog.at_level(logging.INFO, logger="hf_kd.teacher.precompute"):
        cached = trainer_for(tmp_path, teacher, student, data, precompute_teacher_logits=True, **settings)
    names = cached.feature_distillation.term.teacher_features()
    columns = [f"teacher_feature_{i}" for i in range(len(names))]
    assert set(columns) < set(cached.train_dataset.column_names)
    logged = next(r.getMessage() for r in caplog.records if "computed once" in r.getMessage())
    assert f"teacher_feature_0 ({names[0]}) 0.05 MiB" in logged and "teacher_logits 0.01 MiB" in logged  # 128 x 100
    # Every example's cached features are the live teacher's (rows in the dataset's order), run at the same batch
    # size: a matmul's rounding depends on the batch's shape.
    with torch.no_grad():
        pixels = data.with_format("torch")["pixel_values"][:]
        chunks = [teacher(pixel_values=p, output_hidden_states=True).hidden_states for p in pixels.split(32)]
    for name, column in zip(names, columns):
        live = torch.cat([hidden[int(name.split(".")[1])] for hidden in chunks])
        torch.testing.assert_close(cached.train_dataset.with_format("torch")[column][:], live, rtol=0, atol=0)
    calls = CountCalls(teacher)
    cached.train()
    assert calls.count == 0  # neither for the logits nor for the features
    if loss == "overhaul":
        assert cached.feature_distillation.term.connectors.margin(0).shape == (100,)

    live_teacher, live_student = mlps()
    live = trainer_for(tmp_path, live_teacher, live_student, data, **settings)
    live_calls = CountCalls(live_teacher)
    live.train()
    assert live_calls.count == 8  # one forward per step
    # Bit for bit: the same teacher weights, the same float32 matmuls (shape (32, ...) rows), the same data order.
    for key, value in live_student.state_dict().items():
        torch.testing.assert_close(student.state_dict()[key], value, rtol=0, atol=0, msg=key)
    for key, value in live.feature_distillation.term.connectors.state_dict().items():
        torch.testing.assert_close(cached.feature_distillation.term.connectors.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_features_a_dataset_already_carries_are_read_and_the_teacher_does_not_run(tmp_path):
    """`add_teacher_logits(..., features=...)` run beforehand (a study's cache): the trainer reads the columns as its
    own cache, the same student bit for bit as `precompute_teacher_logits=True`; a column of another shape is refused."""
    from hf_kd import add_teacher_logits

    data = images(128)
    pairs = ["hidden_states.2:hidden_states.2"]
    settings = dict(feature_loss="rkd", feature_pairs=pairs, num_train_epochs=1, teacher_batch_size=32)
    teacher, student = mlps()
    trainer_for(tmp_path, teacher, student, data, precompute_teacher_logits=True, **settings).train()
    carried_teacher, carried_student = mlps()
    carried = add_teacher_logits(data.with_format("torch"), carried_teacher, batch_size=32,
                                 features=["hidden_states.2"])  # fmt: skip
    trainer = DistillationTrainer(model=carried_student, teacher_model=carried_teacher,
                                  args=config(tmp_path, **settings), train_dataset=carried)  # fmt: skip
    calls = CountCalls(carried_teacher)
    trainer.train()
    assert calls.count == 0
    for key, value in student.state_dict().items():
        torch.testing.assert_close(carried_student.state_dict()[key], value, rtol=0, atol=0, msg=key)
    wrong = add_teacher_logits(data.with_format("torch"), carried_teacher, batch_size=32, features=["hidden_states.1"])
    with pytest.raises(ValueError, match="teacher_feature_0 holds features of shape"):
        DistillationTrainer(model=mlps()[1], teacher_model=carried_teacher,
                            args=config(tmp_path, **{**settings, "feature_pairs": ["hidden_states.2:hidden_states.3"]}),
                            train_dataset=wrong)  # fmt: skip


def test_cached_features_are_restored_to_the_datasets_order_and_keyed_by_which_are_cached(tmp_path):
    from hf_kd import add_teacher_logits
    from hf_kd.data import InMemoryDataset

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=16, num_labels=3)  # fmt: skip
    bert = BertForSequenceClassification(cfg).eval()
    g = torch.Generator().manual_seed(0)
    lengths = torch.randint(2, 13, (24,), generator=g)  # sorted longest first for the pass, then put back
    mask = (torch.arange(12) < lengths[:, None]).long()
    ids = torch.randint(1, 50, (24, 12), generator=g) * mask
    data = Dataset.from_dict({"input_ids": ids.numpy(), "attention_mask": mask.numpy()})
    with torch.no_grad():  # one example at a time, unpadded: nothing to sort or trim
        live = torch.cat([bert.bert(input_ids=i[None, :n]).pooler_output for i, n in zip(ids, lengths)])
    on_disk = add_teacher_logits(data.with_format("torch"), bert, batch_size=5, features=["bert.pooler"])
    in_memory = add_teacher_logits(InMemoryDataset({"input_ids": ids, "attention_mask": mask}), bert, batch_size=5,
                                   features=["bert.pooler"])  # fmt: skip
    torch.testing.assert_close(on_disk["teacher_feature_0"][:], live)  # float rounding only: shorter padded batches
    torch.testing.assert_close(in_memory.columns["teacher_feature_0"], live)
    # Which features are cached is part of the cache key; the logits alone keep the key they had.
    keys = {
        features: add_teacher_logits(data, bert, batch_size=8, features=features)._fingerprint
        for features in ((), ("bert.pooler",), ("classifier@input",), ("bert.pooler", "classifier@input"))
    }
    assert len(set(keys.values())) == 4
    assert add_teacher_logits(data, bert, batch_size=8, features=["bert.pooler"])._fingerprint == keys[("bert.pooler",)]
    with pytest.raises(ValueError, match=r"'bert.encoder.layer.0' has shape \(12, 16\) per example; only vectors"):
        add_teacher_logits(data, bert, batch_size=8, features=["bert.encoder.layer.0"])

    # Through the trainer: another teacher feature in feature_pairs, another cache.
    teacher, student = mlps()
    pairs = ("hidden_states.1:hidden_states.3", "hidden_states.1:hidden_states.1", "hidden_states.2:hidden_states.3")
    fingerprints = [
        trainer_for(tmp_path, teacher, student, images(32), feature_pairs=[pair], precompute_teacher_logits=True,
                    max_steps=1).train_dataset._fingerprint
        for pair in pairs
    ]  # fmt: skip
    assert fingerprints[0] != fingerprints[1] and fingerprints[0] == fingerprints[2]  # the student side is not cached


def test_feature_maps_are_not_cached_and_are_refused_with_their_size(tmp_path):
    torch.manual_seed(0)
    cnn = {"num_channels": 1, "image_size": 28}
    teacher, student = model_from_preset("cifar10-cnn-teacher", **cnn), model_from_preset("cifar10-cnn-student", **cnn)
    with pytest.raises(ValueError) as error:
        trainer_for(tmp_path, teacher, student, images(32), feature_pairs=["hidden_states.1:hidden_states.3"],
                    precompute_teacher_logits=True)  # fmt: skip
    message = str(error.value)
    # 32 examples x 64 x 28 x 28 float32 = 6.1 MiB.
    assert "hidden_states.3 (64, 28, 28): 6.1 MiB" in message and "the 32 training examples in float32" in message
    assert "precompute_teacher_logits=False" in message


def test_the_report_records_the_feature_settings_only_when_there_are_pairs(tmp_path):
    from hf_kd.report.report import SETTING_LABELS, run_settings

    with_pairs = run_settings(config(tmp_path, feature_loss="overhaul"), teacher_logits="live")
    assert with_pairs["feature_pairs"] == ["auto"] and with_pairs["feature_loss"] == "overhaul"
    assert with_pairs["feature_weight"] == 1e-3 and with_pairs["feature_connector"] == "auto"
    without = run_settings(config(tmp_path, feature_pairs=None), teacher_logits="live")
    assert not any(key.startswith("feature_") for key in without)
    # The card lists them too (a list of pairs once broke the card's settings table).
    from hf_kd.report.modelcard import setting_rows

    settings = {**with_pairs, "feature_pairs": ["hidden_states.1:hidden_states.3", "convs.0@input:convs.1"]}
    rows = dict(setting_rows(settings))
    assert rows[SETTING_LABELS["feature_pairs"]] == "`hidden_states.1:hidden_states.3`, `convs.0@input:convs.1`"
    assert rows[SETTING_LABELS["feature_weight"]] == "0.001"
