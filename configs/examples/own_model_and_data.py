"""Your own model and your own data with natural clients, in one module.

As a config file (the module registers both, then get_config uses them):
  python main.py --config=configs/examples/own_model_and_data.py --workdir=runs/own
From Python, passing the module and the arrays directly:
  python configs/examples/own_model_and_data.py
"""

import gzip
import os

import flax.linen as nn
import numpy as np

import fedjax_seq

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"  # Debian's dataset-fashion-mnist


class SmallCNN(nn.Module):
  """Any flax module that maps a batch of images (B, H, W, C) to logits."""
  num_classes: int = 10
  width: int = 16

  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(self.width, (3, 3), strides=2)(x))
    x = nn.relu(nn.Dense(64, name="hidden")(x.reshape(x.shape[0], -1)))
    return nn.Dense(self.num_classes, name="head")(x)


def read_idx(name: str, data_dir: str) -> np.ndarray:
  with gzip.open(os.path.join(data_dir or FASHION_MNIST, name + ".gz")) as f:
    raw = f.read()
  dims = raw[3]
  shape = np.frombuffer(raw, ">u4", dims, offset=4)
  return np.frombuffer(raw, np.uint8, offset=4 + 4 * dims).reshape(shape)


def writers(data_dir: str = "", seed: int = 0, **_) -> fedjax_seq.FederatedArrays:
  """12,000 Fashion-MNIST images held by 100 "writers" of one class each (client ids)."""
  x = read_idx("train-images-idx3-ubyte", data_dir)[:12000, :, :, None]
  y = read_idx("train-labels-idx1-ubyte", data_dir)[:12000]
  writer = np.random.default_rng(seed).integers(0, 10, len(y)) + 10 * y  # 10 per class
  return fedjax_seq.FederatedArrays(
      x, y, read_idx("t10k-images-idx3-ubyte", data_dir)[:, :, :, None],
      read_idx("t10k-labels-idx1-ubyte", data_dir), client_ids=writer, name="writers")


# Registered, the names work in main.py, the sweep and the study; `width` becomes
# the config field model.small_cnn.width, the classifier feeds classifier_* representations.
fedjax_seq.register_model("small_cnn", lambda num_classes, width: SmallCNN(num_classes, width),
                          hyperparameters={"width": 16}, classifier=("hidden", "head"))
fedjax_seq.register_dataset("writers", writers, num_classes=10, image_shape=(28, 28, 1),
                            natural_clients=True)


def get_config():
  c = fedjax_seq.default_config()
  c.algorithm.name = "fedseq"
  c.data.name, c.model.name = "writers", "small_cnn"  # FedSeq's evaluator: the same model
  c.fedseq.update(pretrain_epochs=1, min_examples=600)
  c.client.lr = 0.05
  c.rounds, c.eval_every = 10, 5
  return c


if __name__ == "__main__":
  config = get_config()
  exp = fedjax_seq.build(config, model=SmallCNN(), data=writers())
  state = exp.state
  for r in range(1, config.rounds + 1):
    state, _ = exp.round(state, r)
  accuracy, _ = exp.evaluate(state)
  print(f"FedSeq on {exp.data.num_clients} natural clients: test accuracy {accuracy:.3f}")
