"""Speed work for XLA:CPU only, kept apart from the model definitions.

:mod:`~cmcd_jax.cpu.conv`: ``Conv``, ``nn.Conv``'s drop-in with a faster weight gradient on
XLA:CPU (on TPU/GPU it is ``nn.Conv``'s computation); the encoders import it in one place.
:mod:`~cmcd_jax.cpu.xla_flags`: the XLA:CPU flag the entry points set before JAX starts.
"""
