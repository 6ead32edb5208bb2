"""The theory, measured: target test error against the estimated modality distance.

    python -m cmcd_jax.main --config=configs/gap_sweep.py --workdir=/tmp/cmcd_gap \
      --config.data.target=sketch      # or depth, audio

The target modality is corrupted at each level of `gap_levels` (sketch: stroke pixels
erased with that probability; depth: Gaussian noise of level x the map's std; audio: white
noise of 3 x level x the clip's RMS), identically in train and test. At each level the
shared teacher is distilled into a fresh student, probed, and the distance between the
teacher's source embeddings and the student's target embeddings is estimated (C2ST lower
bound on total variation, RBF MMD). `results.md` lists error and distance per level with
their Spearman correlation; `figures/error_vs_tv_lower.png` and `error_vs_mmd.png` plot them.
"""

from cmcd_jax import defaults


def get_config():
    c = defaults.default_config()
    c.methods = "cmc,cmd"
    c.gap_levels = "0,0.25,0.5,0.75,0.9"
    c.pretrain.steps = 800
    return c
