"""The default experiment config (the quickstart's); every file in `configs/` starts from it."""

import ml_collections


#: Unpaired source images step 1 trains on beside the paired ones (cmcd_shapes): M >> m.
SOURCE_POOL = 12000


def stage(steps: int, batch_size: int, learning_rate: float, **extra):
    """Duration, batch and AdamW settings of one training stage."""
    return ml_collections.ConfigDict(dict(
        steps=steps, batch_size=batch_size, learning_rate=learning_rate, weight_decay=1e-4,
        warmup_steps=max(steps // 20, 1), min_crop_scale=0.3,
        loss_chunk_size=0,  # > 0: memory-lean loss over column chunks (large global batches)
        **extra))


def default_config() -> ml_collections.ConfigDict:
    """Image -> sketch on cmcd_shapes with a small ConvNet: minutes on a CPU.

    Every key is described in `HELP` (`python -m cmcd_jax.main --config=... --config_help`).
    """
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.log_every = 50
    c.dataset = "cmcd_shapes"
    c.data = dict(config_name="32", data_dir="", dir="", resolution=32, pairing="instance",
                  audio_sample_rate=0, audio_seconds=1.0, source="image", target="sketch",
                  source_pool=SOURCE_POOL, num_pairs=0)
    c.methods = "cmc,cmd,l2,target_only,random_init"
    c.num_seeds = 1
    c.gap_levels = ""
    # The image's classes show in its colours, which one conv per stage reads; the sketch's
    # only in its strokes' shape, which takes two (measured: README, "The embedded data").
    c.model = dict(encoder="convnet",
                   encoder_kwargs=dict(widths=(16, 32, 64), convs_per_stage=1),
                   target_encoder_kwargs=dict(widths=(16, 32, 64), convs_per_stage=2),
                   proj_hidden_dim=256, proj_dim=64, dtype="float32")
    c.pretrain = stage(400, 128, 2e-3, temperature=0.5, colour_jitter=0.4, reuse_teacher=True)
    c.pretrain.min_crop_scale = 0.15
    c.distill = stage(800, 128, 2e-3, teacher_export="", cache_teacher=False)
    c.distill.cmc = dict(temperature=0.2, symmetric=True)
    c.distill.cmd = dict(student_temperature=0.2, teacher_temperature=0.2, variant="cross")
    c.distill.socket = dict(statistics_weight=1.0)
    c.target_only = stage(600, 64, 2e-3)  # Its best of 300, 600 and 1000 steps (README).
    c.finetune = stage(300, 64, 1e-3)
    c.downstream = dict(mode="linear", labels_per_class=10, probe_steps=300,
                        probe_learning_rate=1e-2, probe_weight_decay=1e-2, segmentation=True,
                        seg_steps=300, seg_batch_size=32, seg_learning_rate=3e-3)
    c.parallel = dict(num_devices=0, distributed="auto")
    c.checkpoint = dict(every=200, keep=2)
    return c


def real_data_config() -> ml_collections.ConfigDict:
    """`default_config` sized for real datasets: ResNet-18 on 64x64 inputs, budgets of tens of
    thousands of steps (the starting point of the recipe configs)."""
    c = default_config()
    c.data.resolution = 64
    c.model.encoder = "resnet18"
    c.model.encoder_kwargs = c.model.target_encoder_kwargs = dict(num_filters=64)
    c.model.proj_hidden_dim, c.model.proj_dim = 512, 128
    c.pretrain.update(steps=20000, batch_size=256, learning_rate=1e-3, warmup_steps=1000)
    c.distill.update(steps=20000, batch_size=256, learning_rate=1e-3, warmup_steps=1000)
    c.target_only.update(steps=5000, batch_size=128, learning_rate=1e-3, warmup_steps=250)
    c.finetune.update(steps=5000, batch_size=128, learning_rate=5e-4, warmup_steps=250)
    c.downstream.probe_steps = 2000
    c.checkpoint.every = 2000
    return c


def tiny_config() -> ml_collections.ConfigDict:
    """`default_config` shrunk to a smoke test (seconds a stage on a CPU): `cmcd_shapes/tiny`
    without a source pool, 10 steps of batch 32 a stage (what the end-to-end tests run)."""
    c = default_config()
    c.log_every = 5
    c.data.update(config_name="tiny", source_pool=0)
    for stage in (c.pretrain, c.distill, c.target_only, c.finetune):
        stage.update(steps=10, batch_size=32)  # Warm-up kept: capped at steps - 1 when run.
    c.downstream.update(probe_steps=50, seg_steps=10)
    return c


def config_variant(path: str, variants: dict, name: str) -> ml_collections.ConfigDict:
    """`variants[name]()`: the config of `--config=<path>:<name>`; any other name is an
    error listing the valid ones."""
    if name not in variants:
        raise ValueError(f"{path}:{name}: no such variant; valid: "
                         f"{', '.join(v or repr(v) for v in variants)}")
    return variants[name]()


HELP = {
    "seed": "seed of every stage (initialisation, data order, few-shot picks)",
    "log_every": "steps between progress lines / metrics.jsonl / TensorBoard scalars",
    "dataset": "cmcd_shapes (embedded), paired_folder (your files), or a recipe: "
               "spoken_digit_mnist, nyu_depth_v2, domainnet, sketchy",
    "data.config_name": "cmcd_shapes variant: 32, 64 or tiny",
    "data.data_dir": "TFDS data dir ('' = $TFDS_DATA_DIR or ~/tensorflow_datasets)",
    "data.dir": "paired_folder: the directory holding manifest.csv",
    "data.resolution": "recipes and paired_folder: images, maps and masks cropped to their "
                       "centre square and resized to this side (paired_folder: 0 keeps the "
                       "files' own size, which must then agree within a column)",
    "data.pairing": "'instance' (the dataset's pairs) or 'label' (a random same-class "
                    "partner, re-drawn every epoch: a weaker assumption)",
    "data.audio_sample_rate": "paired_folder: .wav files are resampled to this rate (Hz); "
                              "0: the files' own (the highest, said in a note, when they "
                              "differ)",
    "data.audio_seconds": "paired_folder: the duration the network hears: each clip's centre "
                          "in evaluation (zero-padded when shorter), a random crop in "
                          "training; 0: every clip zero-padded at the end to the longest",
    "data.source_pool": "cmcd_shapes only (other datasets have the records they have): "
                        "unpaired source images (cmcd_shapes_source) that step 1 trains on "
                        "beside the paired ones (0: none)",
    "data.num_pairs": "cmcd_shapes: use the first m train records (the paired set, and all "
                      "the target data any method sees); 0: all",
    "data.source": "the rich modality of the teacher (step 1)",
    "data.target": "the modality distilled into (steps 2 and 3)",
    "methods": "comma-separated; ours: cmc, cmd; baselines: l2, socket, target_only, "
               "ssl_target, random_init; any name registered in cmcd_jax.methods",
    "num_seeds": "> 1: every method for seeds seed .. seed+num_seeds-1; mean and std",
    "gap_levels": "e.g. '0,0.5,1': the gap sweep, the target corrupted at each level",
    "model.encoder": "backbone of every modality: convnet, resnet18, vit_t4",
    "model.encoder_kwargs": "constructor arguments of the source's backbone (the teacher)",
    "model.target_encoder_kwargs": "constructor arguments of every target-modality backbone "
                                   "(the students and every target-side baseline)",
    "model.proj_hidden_dim": "hidden width of the projection heads",
    "model.proj_dim": "dimension of the contrastive embedding space",
    "model.dtype": "the encoders' compute dtype: float32, or bfloat16 on TPU/GPU (parameters, "
                   "BatchNorm statistics, features, heads, logits and losses stay float32)",
    "steps": "optimizer steps of the stage",
    "batch_size": "global batch size (divisible by the number of devices)",
    "learning_rate": "peak AdamW learning rate (linear warm-up, cosine decay)",
    "weight_decay": "AdamW weight decay",
    "warmup_steps": "linear warm-up steps",
    "min_crop_scale": "smallest random-crop area fraction",
    "loss_chunk_size": "> 0: memory-lean loss over column chunks (large global batches)",
    "pretrain.temperature": "NT-Xent temperature of SimCLR",
    "pretrain.colour_jitter": "colour-jitter strength on RGB views (and of the contrast and "
                              "offset of depth maps)",
    "pretrain.reuse_teacher": "keep the step-1 teacher in the TFDS data dir "
                              "(cmcd_jax_teachers/<key of data and step-1 config>) and reuse "
                              "it in every later run with the same key",
    "distill.teacher_export": "a path: use that export as the teacher and skip step 1",
    "distill.cache_teacher": "compute the teacher's outputs once (plain and mirrored source) "
                             "and look them up instead of a forward per step; needs "
                             "distill.min_crop_scale=1 and instance pairing",
    "distill.cmc.temperature": "InfoNCE temperature of CMC",
    "distill.cmc.symmetric": "CMC in both directions (target->source and source->target)",
    "distill.cmd.student_temperature": "CMD temperature of the student's similarities",
    "distill.cmd.teacher_temperature": "CMD temperature of the teacher's similarities",
    "distill.cmd.variant": "'cross' (student-teacher similarities) or 'within' "
                           "(student-student vs teacher-teacher)",
    "distill.socket.statistics_weight": "weight of SOCKET's BatchNorm-statistics term (a "
                                        "student deeper than the teacher is matched at the "
                                        "end of each stage)",
    "downstream.mode": "'linear' (frozen encoder) or 'finetune' (encoder + linear head, "
                       "settings in finetune.*)",
    "downstream.labels_per_class": "labelled train records per class for step 3",
    "downstream.probe_steps": "steps of the linear probe",
    "downstream.probe_learning_rate": "learning rate of the linear probe",
    "downstream.probe_weight_decay": "weight decay of the linear probe",
    "downstream.segmentation": "datasets with masks: train a decoder head, report seg_miou",
    "downstream.seg_steps": "steps of the segmentation head",
    "downstream.seg_batch_size": "batch size of the segmentation head",
    "downstream.seg_learning_rate": "learning rate of the segmentation head",
    "parallel.num_devices": "devices of the data-parallel mesh (0: all of every process)",
    "parallel.distributed": "jax.distributed.initialize(): auto, on or off",
    "checkpoint.every": "steps between train-state checkpoints (for resuming)",
    "checkpoint.keep": "checkpoints kept per stage",
}


def describe(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """One line per option: `key = value  # what it does`."""
    lines = []
    for key, value in sorted(config.items()):
        name = prefix + key
        if isinstance(value, ml_collections.ConfigDict) and name not in HELP:
            lines += describe(value, name + ".")
            continue
        text = HELP.get(name, HELP.get(key, ""))
        shown = value.to_dict() if isinstance(value, ml_collections.ConfigDict) else value
        lines.append(f"{name} = {shown!r}" + (f"  # {text}" if text else ""))
    return lines
