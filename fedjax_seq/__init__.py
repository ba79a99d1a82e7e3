"""fedjax_seq: vectorized federated learning in JAX (FedSeq and its baselines).

Library use: `fedjax_seq.default_config()` and `fedjax_seq.build(config)`
(see fedjax_seq.api and the README's "Use from Python").
"""

from fedjax_seq.api import Experiment, build, default_config

__version__ = "0.1.0"
__all__ = ["Experiment", "build", "default_config", "__version__"]
