"""Every launch/accelerate/*.yaml goes through accelerate's own loader and `accelerate launch`'s validation, and
sets up the distributed environment it claims to (what the training processes would receive)."""

from __future__ import annotations

import pytest
from accelerate.commands.config.config_args import ClusterConfig, load_config_from_file
from accelerate.commands.launch import _validate_launch_command, launch_command_parser
from accelerate.utils import DistributedType
from accelerate.utils.launch import prepare_deepspeed_cmd_env, prepare_multi_gpu_env

from tests.conftest import ROOT
from finetune.model import base as model_base

CONFIGS = ROOT / "launch" / "accelerate"
EXPECTED = {
    "single_gpu": DistributedType.NO,
    "multi_gpu": DistributedType.MULTI_GPU,
    "fsdp_qlora": DistributedType.FSDP,
    "deepspeed_zero2": DistributedType.DEEPSPEED,
    "deepspeed_zero3": DistributedType.DEEPSPEED,
}


def launch_args(name: str, *flags: str):
    """What `accelerate launch --config_file <name> [flags] finetune/train.py recipe=qlora_70b` parses to."""
    parser = launch_command_parser()
    args = parser.parse_args(
        [
            "--config_file",
            str(CONFIGS / f"{name}.yaml"),
            *flags,
            str(ROOT / "finetune" / "train.py"),
            "recipe=qlora_70b",
        ]
    )
    args, defaults, mp_from_config = _validate_launch_command(args)
    if args.use_deepspeed:  # as accelerate's launch_command does before starting DeepSpeed
        fields = list(defaults.deepspeed_config) + (["mixed_precision"] if mp_from_config else [])
        args.deepspeed_fields_from_accelerate_config = ",".join(fields)
    return args


def test_every_shipped_config_is_tested():
    assert sorted(p.stem for p in CONFIGS.glob("*.yaml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_config_loads_with_accelerates_loader(name):
    cfg = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert isinstance(cfg, ClusterConfig)
    assert cfg.distributed_type == EXPECTED[name]
    args = launch_args(name)
    assert args.training_script_args == ["recipe=qlora_70b"]  # Hydra overrides pass through untouched


def test_multi_gpu_launches_ddp_with_the_requested_process_count():
    args = launch_args("multi_gpu", "--num_processes", "4")
    env = prepare_multi_gpu_env(args)
    assert args.multi_gpu and not args.use_fsdp
    assert args.nproc_per_node == "4" and "ACCELERATE_USE_FSDP" not in env


def test_fsdp_qlora_sets_what_peft_and_bitsandbytes_require():
    env = prepare_multi_gpu_env(launch_args("fsdp_qlora", "--num_processes", "8"))
    assert env["ACCELERATE_USE_FSDP"] == "true"  # finetune/model/base.py reads this to load the base for FSDP
    assert env["FSDP_CPU_RAM_EFFICIENT_LOADING"] == "true" and env["FSDP_SYNC_MODULE_STATES"] == "true"
    assert env["FSDP_USE_ORIG_PARAMS"] == "false"
    assert env["FSDP_AUTO_WRAP_POLICY"] == "TRANSFORMER_BASED_WRAP"
    assert env["FSDP_STATE_DICT_TYPE"] == "SHARDED_STATE_DICT"


@pytest.mark.parametrize("name,stage", [("deepspeed_zero2", "2"), ("deepspeed_zero3", "3")])
def test_deepspeed_configs_set_their_zero_stage(name, stage):
    _, env = prepare_deepspeed_cmd_env(launch_args(name))
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == stage
    assert env["ACCELERATE_MIXED_PRECISION"] == "bf16"


def test_slurm_script_starts_one_launcher_per_node_with_its_machine_rank(tmp_path):
    """launch/slurm/train.sbatch on 2 nodes x 4 GPUs, with stand-ins for srun/scontrol (each runs or prints what
    the real one would) and for python (records its argv); every launcher's arguments then go through
    `accelerate launch`'s own parser and validation."""
    import os
    import shlex
    import subprocess

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(
        "#!/bin/bash\nwhile [[ $1 == --* ]]; do shift; done\n"
        'for n in $(seq 0 $((SLURM_NNODES - 1))); do SLURM_NODEID=$n "$@"; done\n'
    )
    (bin_dir / "scontrol").write_text("#!/bin/bash\necho \"$3\" | tr , '\\n'\n")
    (bin_dir / "python").write_text(f'#!/bin/bash\necho "$*" >> {tmp_path}/launches\n')
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "PYTHON": str(bin_dir / "python"),
        "SLURM_NNODES": "2",
        "SLURM_GPUS_ON_NODE": "4",
        "SLURM_JOB_NODELIST": "gpu-a,gpu-b",
        "SLURM_JOB_NAME": "ft",
        "SLURM_JOB_ID": "77",
        "SLURM_SUBMIT_DIR": str(ROOT),
        "ACCELERATE_CONFIG": str(CONFIGS / "fsdp_qlora.yaml"),
    }
    subprocess.run(
        ["bash", str(ROOT / "launch" / "slurm" / "train.sbatch"), "recipe=qlora_70b", "lora.r=32"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    launches = (tmp_path / "launches").read_text().splitlines()
    assert len(launches) == 2
    for rank, line in enumerate(launches):
        argv = shlex.split(line)
        assert argv[:2] == ["-m", "accelerate.commands.launch"]
        args, _, _ = _validate_launch_command(launch_command_parser().parse_args(argv[2:]))
        assert (args.num_machines, args.num_processes, args.machine_rank) == (2, 8, rank)
        assert (args.main_process_ip, args.main_process_port) == ("gpu-a", 29500) and args.use_fsdp
        assert args.training_script_args == ["output_dir=outputs/ft-77", "recipe=qlora_70b", "lora.r=32"]


@pytest.mark.parametrize(
    "name,sharding",
    [
        ("single_gpu", None),
        ("multi_gpu", None),
        ("fsdp_qlora", "fsdp"),
        ("deepspeed_zero2", "zero2"),
        ("deepspeed_zero3", "zero3"),
    ],
)
def test_model_loader_sees_the_sharding_each_config_launches(name, sharding):
    from finetune.runtime.dist import launched_sharding

    args = launch_args(name, "--num_processes", "2")
    env = prepare_deepspeed_cmd_env(args)[1] if args.use_deepspeed else prepare_multi_gpu_env(args)
    assert launched_sharding(env) == sharding


def test_qlora_under_zero3_stops_before_loading_weights():
    import os

    from tests.conftest import compose
    from finetune import config

    cfg = config.load(compose("recipe=tiny_qlora"))
    saved = dict(os.environ)
    os.environ.update(ACCELERATE_USE_DEEPSPEED="true", ACCELERATE_DEEPSPEED_ZERO_STAGE="3")
    try:
        with pytest.raises(config.ConfigError, match="launch/accelerate/fsdp_qlora.yaml"):
            model_base.load_base(cfg.model, cfg.quant)
    finally:
        os.environ.clear()
        os.environ.update(saved)
