"""The paper's comparison: every method x 3 seeds on one dataset and modality pair.

    python -m cmcd_jax.main --config=configs/compare.py --workdir=/tmp/cmcd_compare \
      --config.data.target=sketch      # or depth, audio; --config.dataset=... for another

Trains the step-1 teacher once (shared by every method, seed and target: it is kept in the
data dir's `cmcd_jax_teachers/` and reused by every run with the same step-1 config), then
for each seed distils with cmc, cmd (`--config.distill.cmd.variant=within` for the other CMD
variant), l2 and socket, trains the target_only and ssl_target baselines and probes a random
encoder.
Writes `results.json` (per method: mean and std over seeds of probe_top1, retrieval_top1,
seg_miou where masks exist, tv_lower, mmd; plus every seed's row), `results.md` and
`figures/comparison.png` (bars with std error bars). `--config.downstream.mode=finetune`
fine-tunes instead of probing.
"""

from cmcd_jax import defaults


def get_config():
    c = defaults.default_config()
    c.methods = "cmc,cmd,l2,socket,target_only,ssl_target,random_init"
    c.num_seeds = 3
    c.pretrain.steps = 800  # the teacher's budget, and ssl_target's (as many steps on the target)
    return c
