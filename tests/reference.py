"""Plain NumPy references for the update rules, and tiny federated datasets.

The model is multinomial logistic regression (the library's MLP with no
hidden layer) on 2x2x1 images scaled to [0, 1], so every update can be
written out by hand in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_seq.core import engine
from fedjax_seq.data.federated import Preprocess, client_schedule, make_fed_data
from fedjax_seq.models.lenet import MLP

NUM_CLASSES = 3
MODEL = MLP(num_classes=NUM_CLASSES, hidden=())
PREPROCESS = Preprocess(mean=(0.0,), std=(1.0,), augment=False)


def tiny_data(sizes, seed=0):
  """Clients of the given sizes over random 2x2x1 uint8 images."""
  rng = np.random.default_rng(seed)
  n = sum(sizes)
  images = rng.integers(0, 256, (n, 2, 2, 1), dtype=np.uint8)
  labels = rng.integers(0, NUM_CLASSES, n).astype(np.int32)
  bounds = np.cumsum([0] + list(sizes))
  clients = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(sizes))]
  return images, labels, make_fed_data(images, labels, clients)


def init_params(seed=0):
  return MODEL.init(jax.random.key(seed), jnp.zeros((1, 2, 2, 1)))


def trainer(lr=0.1, momentum=0.0, weight_decay=0.0, epochs=1, batch_size=2, unroll=1,
            max_steps=0):
  return engine.make_local_trainer(
      MODEL.apply, PREPROCESS, engine.SGD(lr, momentum, weight_decay),
      local_epochs=epochs, batch_size=batch_size, unroll=unroll, max_steps=max_steps)


def to_np(params):
  p = params["params"]["fc1"]
  return np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)


def batches(data, client_id, key, epochs, batch_size):
  """The engine's own batch order for one client: a list of index arrays."""
  k_order, _ = jax.random.split(key)
  idx, mask = client_schedule(k_order, data.client_idx[client_id],
                              data.client_sizes[client_id], epochs, batch_size)
  idx, mask = np.asarray(idx), np.asarray(mask)
  return [row[m] for row, m in zip(idx, mask, strict=True) if m.any()]


def grad(w, b, x, y):
  """Gradient of mean softmax cross-entropy of logits x @ w + b."""
  logits = x @ w + b
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  p[np.arange(len(y)), y] -= 1.0
  p /= len(y)
  return x.T @ p, p.sum(0)


def features(images):
  return images.reshape(len(images), -1).astype(np.float64) / 255.0


def local_sgd(w, b, images, labels, batch_list, lr, momentum=0.0, weight_decay=0.0,
              correction=None, grad_term=None, post_step=None):
  """PyTorch SGD on the listed batches.

  grad_term(w, b) -> (gw, gb) is added to the loss gradient (before weight
  decay and momentum), correction(w, b) after momentum and, as the original
  PGD optimizer does in place, into the momentum buffer; post_step(w, b) runs
  after every step.
  """
  x_all = features(images)
  bw, bb = np.zeros_like(w), np.zeros_like(b)
  for batch in batch_list:
    gw, gb = grad(w, b, x_all[batch], labels[batch])
    if grad_term is not None:
      tw, tb = grad_term(w, b)
      gw, gb = gw + tw, gb + tb
    dw, db = gw + weight_decay * w, gb + weight_decay * b
    if momentum:
      bw, bb = momentum * bw + dw, momentum * bb + db
      dw, db = bw, bb
    if correction is not None:
      cw, cb = correction(w, b)
      dw, db = dw + cw, db + cb
      if momentum:
        bw, bb = dw, db
    w, b = w - lr * dw, b - lr * db
    if post_step is not None:
      post_step(w, b)
  return w, b


def mean_grad(w, b, images, labels, batch_list):
  """Average of the per-batch mean-loss gradients (SCAFFOLD's option 1)."""
  x_all = features(images)
  gs = [grad(w, b, x_all[batch], labels[batch]) for batch in batch_list]
  return sum(g[0] for g in gs) / len(gs), sum(g[1] for g in gs) / len(gs)


def resumed_and_uninterrupted(alg, round_fn, data, keys, directory: str, stop: int = 1):
  """(uninterrupted, resumed) states after all `keys`: the resumed run is checkpointed
  with orbax after `stop` rounds, restored into a fresh state and continued."""
  from fedjax_seq.training.checkpoint import Checkpointer
  full = alg.init(init_params())
  for key in keys:
    full, _ = round_fn(full, data, key)
  part = alg.init(init_params())
  for key in keys[:stop]:
    part, _ = round_fn(part, data, key)
  ckpt = Checkpointer(directory)
  ckpt.save(stop, part, {})
  ckpt.close()
  ckpt = Checkpointer(directory)
  part, _ = ckpt.restore(stop, alg.init(init_params()))
  ckpt.close()
  for key in keys[stop:]:
    part, _ = round_fn(part, data, key)
  return full, part
