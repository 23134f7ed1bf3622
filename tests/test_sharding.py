"""hf_kd.runs.sharding without launching processes: what the examples refuse before training, and loading a whole model
while a ZeRO-3 run is configured. (The sharded runs themselves: tests/test_sharded.py, test_examples_sharded.py.)"""

from __future__ import annotations

import pytest

LAUNCH_VARIABLES = (
    "ACCELERATE_USE_FSDP", "FSDP_STATE_DICT_TYPE", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
    "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL", "ACCELERATE_DEEPSPEED_CONFIG_FILE",
)  # fmt: skip


@pytest.mark.parametrize(
    "env, refused",
    [
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_STATE_DICT_TYPE": "SHARDED_STATE_DICT"}, "SHARDED_STATE_DICT"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_STATE_DICT_TYPE": "LOCAL_STATE_DICT"}, "LOCAL_STATE_DICT"),
        ({"ACCELERATE_USE_FSDP": "true", "FSDP_STATE_DICT_TYPE": "FULL_STATE_DICT"}, None),
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3"}, "zero3_save_16bit_model"),
        (
            {"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
             "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL": "true"},
            None,
        ),  # fmt: skip
        ({"ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "2"}, None),
        ({}, None),
    ],
)
def test_examples_refuse_only_what_they_cannot_save_whole(tmp_path, monkeypatch, env, refused):
    from hf_kd import DistillationConfig
    from hf_kd.runs.sharding import check_sharded_saving

    for name in LAUNCH_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    # Built first: with the DeepSpeed variables set, TrainingArguments wants the deepspeed package installed.
    config = DistillationConfig(output_dir=str(tmp_path), report_to="none")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    if refused is None:
        check_sharded_saving(config)
    else:
        with pytest.raises(ValueError, match=refused):
            check_sharded_saving(config)


def test_whole_model_loading_turns_zero3_partitioning_off_for_its_block_only():
    from transformers.integrations import deepspeed as hf_deepspeed
    from transformers.integrations import is_deepspeed_zero3_enabled

    from hf_kd.placement import whole_model_loading

    class Zero3Config:  # what transformers asks of the run's HfDeepSpeedConfig
        def is_zero3(self):
            return True

    config = Zero3Config()
    hf_deepspeed.set_hf_deepspeed_config(config)
    try:
        assert is_deepspeed_zero3_enabled()
        with whole_model_loading():
            assert not is_deepspeed_zero3_enabled()  # from_pretrained builds the model whole, on this process
        assert is_deepspeed_zero3_enabled()
    finally:
        hf_deepspeed.unset_hf_deepspeed_config()
