"""The default experiment config (the quickstart's); every file in `configs/` starts from it."""

import ml_collections


def stage(steps: int, batch_size: int, learning_rate: float, **extra):
    """Duration, batch and AdamW settings of one training stage."""
    return ml_collections.ConfigDict(dict(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, weight_decay=1e-4,
        warmup_steps=max(steps // 20, 1), min_crop_scale=0.3,
        loss_chunk_size=0,  # > 0: memory-lean loss over column chunks (large global batches)
        **extra))


def default_config() -> ml_collections.ConfigDict:
    """Image -> sketch on cmcd_shapes with a small ConvNet: minutes on a CPU."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.log_every = 50
    c.dataset = "cmcd_shapes"
    c.data = dict(
        config_name="32",  # cmcd_shapes variant: 32, 64 or tiny
        data_dir="",  # TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)
        dir="",  # paired_folder: the directory holding manifest.csv
        resolution=32,  # real datasets: images and maps resized to this side
        pairing="instance",  # paired_folder: 'instance' (rows) or 'label' (same class)
        audio_sample_rate=16000,  # paired_folder: .wav files are resampled to this rate
        source="image", target="sketch")
    # Comma-separated; ours: cmc, cmd; baselines: l2, socket, target_only, ssl_target,
    # random_init.
    c.methods = "cmc,cmd,l2,target_only,random_init"
    c.num_seeds = 1  # > 1: every method for seeds seed .. seed+num_seeds-1; mean and std
    c.gap_levels = ""  # e.g. "0,0.5,1": the gap sweep (target corrupted at each level)
    c.model = dict(encoder="convnet", encoder_kwargs=dict(widths=(16, 32, 64),
                                                           convs_per_stage=1),
                   proj_hidden_dim=256, proj_dim=64)
    c.pretrain = stage(400, 128, 2e-3, temperature=0.2, colour_jitter=0.4)
    c.distill = stage(400, 128, 2e-3,
                      teacher_export="")  # a path: use that export as teacher, skip step 1
    c.distill.cmc = dict(temperature=0.07, symmetric=True)
    c.distill.cmd = dict(student_temperature=0.07, teacher_temperature=0.04, variant="cross")
    c.distill.socket = dict(statistics_weight=1.0)  # weight of the BatchNorm-statistics term
    c.target_only = stage(300, 64, 2e-3)
    c.finetune = stage(300, 64, 1e-3)  # downstream.mode=finetune: encoder + linear head
    c.downstream = dict(mode="linear",  # 'linear' (frozen encoder) or 'finetune'
                        labels_per_class=10, probe_steps=300, probe_learning_rate=1e-2,
                        probe_weight_decay=1e-2)
    c.parallel = dict(num_devices=0,  # 0 = every device of every process
                      distributed="auto")  # jax.distributed.initialize(): auto / on / off
    c.checkpoint = dict(every=200, keep=2)  # train-state checkpoints, for resuming
    return c
