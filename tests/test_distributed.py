"""`accelerate launch`: two CPU processes (gloo) on a tiny run, against one process with the same
flags; and the example configs for DDP, FSDP and DeepSpeed ZeRO-2/3 parse into what the launcher
reads."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import write_toy_csv

from kdistill.cli import main

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples" / "accelerate"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(n: int, entry: list[str], argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """`accelerate launch` of `n` CPU processes with the example DDP config (torchrun under the
    hood, gloo between them on CPU), which also keeps any default config of this machine out."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")]),
    }
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(EXAMPLES / "ddp.yaml"),
        "--num_processes",
        str(n),
        "--mixed_precision",
        "no",
        "--main_process_port",
        str(free_port()),
        *entry,
        *argv,
    ]
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize(
    "entry",
    [["-m", "kdistill", "distill"], [str(REPO / "scripts" / "train_soft_distillation.py")]],
    ids=["module", "seed-script"],
)
def test_two_processes_shard_training_and_count_validation_once(
    tmp_path, trained_teacher, tiny_models, entry
):
    csv = write_toy_csv(tmp_path / "toy.csv", 80)
    argv = [
        "--dataset",
        str(csv),
        "--teacher-model",
        str(trained_teacher),
        "--student-model",
        str(trained_teacher),
        "--student-layers",
        "1",
        "--eval-batch-size",
        "5",
        "--learning-rate",
        "1e-3",
        "--mixed-precision",
        "no",
        "--device",
        "cpu",
    ]
    # The student: one layer of the trained teacher (DistilBERT-style), which learns the toy
    # task in a few steps, stably, so two runs that differ only in dropout draws agree.
    epochs = ["--epochs", "3"] if entry[0] == "-m" else ["--epochs", "1"]
    # 64 validation rows in batches of 5 over 2 processes: uneven shards, which Accelerate pads
    # with repeated rows that gather_for_metrics must drop.
    two = tmp_path / "two"
    result = launch(
        2, entry, [*argv, *epochs, "--batch-size", "4", "--output-dir", str(two)], tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    (run,) = two.iterdir()  # one run directory, complete, written once
    assert not run.name.endswith(".partial")
    assert sorted(p.name for p in run.iterdir()) == [
        "best_model",
        "config.json",
        "final_model",
        "history.json",
        "training_curves.png",
    ]
    config = json.loads((run / "config.json").read_text())
    assert config["resolved"]["num_processes"] == 2
    assert config["resolved"]["effective_batch_size"] == 8
    history = json.loads((run / "history.json").read_text())
    rows = config["data"]["validation_rows"]
    assert rows == 64
    assert history["teacher"]["val_rows"] == rows
    assert [e["val_rows"] for e in history["epochs"]] == [rows] * len(history["epochs"])
    # Every training row once per epoch, across both processes (256 rows: 32 batches of 4, 16
    # per process, none repeated to even them out).
    assert all(e["train_samples"] == config["data"]["train_rows"] == 256 for e in history["epochs"])
    if entry[0] != "-m":
        return  # the seed's script: that it runs sharded and writes once is the point

    # One process with the same effective batch (8): the same rows in every optimiser step and
    # the same schedule; only the dropout draws differ.
    one = tmp_path / "one"
    assert main(["distill", *argv, *epochs, "--batch-size", "8", "--output-dir", str(one)]) == 0
    (single,) = one.iterdir()
    reference = json.loads((single / "history.json").read_text())
    assert reference["teacher"]["val_accuracy"] == history["teacher"]["val_accuracy"]
    assert [e["val_rows"] for e in reference["epochs"]] == [rows] * 3
    assert reference["best"]["val_accuracy"] >= 0.9
    assert abs(reference["best"]["val_accuracy"] - history["best"]["val_accuracy"]) <= 0.05
    # Late-epoch losses are small (about 0.1), where different dropout draws move them by more
    # than 10% (a fresh clone measured 0.053 against 0.108): an absolute floor keeps the check
    # about the schedule, not the noise.
    for a, b in zip(history["epochs"], reference["epochs"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=0.1, abs=0.08)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=0.05)


CONFIGS = {
    "ddp.yaml": "MULTI_GPU",
    "fsdp.yaml": "FSDP",
    "deepspeed_zero2.yaml": "DEEPSPEED",
    "deepspeed_zero3.yaml": "DEEPSPEED",
}


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_example_accelerate_configs_parse_into_launcher_settings(name):
    """Each YAML loads with Accelerate's own config class (unknown keys are an error there), and
    each FSDP/DeepSpeed setting is one `accelerate launch` reads."""
    from accelerate.commands.config.config_args import ClusterConfig
    from accelerate.commands.launch import launch_command_parser

    path = EXAMPLES / name
    config = ClusterConfig.from_yaml_file(path)
    assert config.distributed_type.value == CONFIGS[name]
    assert config.num_processes >= 2 and config.mixed_precision == "bf16" and not config.use_cpu
    known = {a.dest for a in launch_command_parser()._actions}
    raw = yaml.safe_load(path.read_text())
    for key in raw.get("fsdp_config", {}):
        assert key in known, key
    for key in raw.get("deepspeed_config", {}):
        assert key in known, key
    if name == "fsdp.yaml":
        fsdp = config.fsdp_config
        assert fsdp["fsdp_version"] == 2 and fsdp["fsdp_state_dict_type"] == "FULL_STATE_DICT"
        assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "Qwen2DecoderLayer"
        # On, it would put the teacher on the meta device outside rank 0.
        assert fsdp["fsdp_cpu_ram_efficient_loading"] is False
    if name.startswith("deepspeed"):
        ds = config.deepspeed_config
        assert ds["zero_stage"] == int(name[-6])  # zero2 / zero3
        assert ds["gradient_clipping"] == 1.0  # kdistill's clipping
        # On, transformers would partition the teacher at load, with no engine to gather it.
        assert ds["zero3_init_flag"] is False
        if ds["zero_stage"] == 3:
            assert ds["zero3_save_16bit_model"] is True  # whole best_model/ and final_model/


def test_fsdp_config_names_a_layer_class_of_the_seed_student():
    """The wrap class must exist in transformers, or FSDP wraps nothing and shards nothing."""
    import transformers

    raw = yaml.safe_load((EXAMPLES / "fsdp.yaml").read_text())
    assert hasattr(
        transformers.models.qwen2.modeling_qwen2,
        raw["fsdp_config"]["fsdp_transformer_layer_cls_to_wrap"],
    )


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_example_configs_become_the_launchers_environment(name, monkeypatch):
    """What `accelerate launch --config_file` hands the processes, and for FSDP the plugin the
    Accelerator builds from it (constructible without a GPU)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

    args = launch_command_parser().parse_args(["--config_file", str(EXAMPLES / name), "x.py"])
    args, defaults, mixed_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as launch_command does before the DeepSpeed launcher
        fields = [*defaults.deepspeed_config, *(["mixed_precision"] if mixed_from_config else [])]
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
        _, env = prepare_deepspeed_cmd_env(args)
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == name[-6]
        assert env["ACCELERATE_DEEPSPEED_ZERO3_INIT"] == "false"
        assert env["ACCELERATE_GRADIENT_CLIPPING"] == "1.0"
    else:
        env = prepare_multi_gpu_env(args)
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert (env.get("ACCELERATE_USE_FSDP") == "true") == (name == "fsdp.yaml")
    if name == "fsdp.yaml":
        from accelerate.utils import FullyShardedDataParallelPlugin

        for key, value in env.items():
            if key.startswith(("FSDP_", "ACCELERATE_")):
                monkeypatch.setenv(key, value)
        plugin = FullyShardedDataParallelPlugin()
        assert plugin.fsdp_version == 2 and plugin.reshard_after_forward is True
        assert plugin.transformer_cls_names_to_wrap == ["Qwen2DecoderLayer"]
        assert plugin.cpu_ram_efficient_loading is False
        assert plugin.state_dict_type.name == "FULL_STATE_DICT"
