"""The scale-out fields every training config shares: mesh, multi-host, checkpoint retention
and fault handling (configs/t2v.py and configs/vae.py)."""

import ml_collections


def add_fields(config: ml_collections.ConfigDict) -> None:
    """Adds config.mesh, config.distributed, keep_period and max_nonfinite_steps."""
    # Device mesh (soraj/sharding.py): sizes multiply to the device count; -1 takes the rest.
    config.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, context=1))
    # Multi-host (soraj/distributed.py): empty fields are read from the environment or from
    # the cluster (TPU VM, SLURM); initialize=False keeps a single process.
    config.distributed = ml_collections.ConfigDict(
        dict(
            initialize=False,
            coordinator_address="",
            num_processes=0,
            process_id=-1,
            initialization_timeout=300,
            heartbeat_timeout=100,
            step_timeout=0,  # seconds one step may take before the watchdog ends the job (0: off)
        )
    )
    # Checkpoints go to CHECKPOINT_DIR/checkpoints: a local or shared folder, or a URL such as
    # gs://bucket/run that orbax writes (gs:// needs `pip install gcsfs`); "" = the workdir.
    # They keep the last keep_checkpoints plus every keep_period-th step (0: none).
    config.checkpoint_dir = ""
    config.keep_period = 0
    # The run stops after this many consecutive steps with non-finite gradients (each is
    # skipped by optax.apply_if_finite); no non-finite state is ever saved.
    config.max_nonfinite_steps = 10
