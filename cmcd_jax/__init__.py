"""cmcd_jax: cross-modality contrastive distillation in JAX/Flax.

Submodules are imported on demand (`from cmcd_jax import losses`), so importing the
package itself stays light.
"""

__version__ = "0.1.0"
