"""fedjax_seq: vectorized federated learning in JAX (FedSeq and its baselines).

Library use: `fedjax_seq.default_config()` and `fedjax_seq.build(config)`,
with your own model (a flax module) and data (`FederatedArrays`), or your
own registered models, datasets and groupings (see fedjax_seq.registry).
"""

from fedjax_seq.api import Experiment, build, default_config
from fedjax_seq.data.arrays import FederatedArrays
from fedjax_seq.registry import (register_dataset, register_grouping, register_measure,
                                 register_model, register_representation)

__version__ = "0.1.0"
__all__ = ["Experiment", "FederatedArrays", "build", "default_config", "register_dataset",
           "register_grouping", "register_measure", "register_model", "register_representation",
           "__version__"]
