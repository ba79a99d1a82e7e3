"""Test-set evaluation in fixed-size batches (one compile per run)."""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_seq.data.federated import Preprocess


def make_evaluator(apply_fn: Callable, preprocess: Preprocess, images: np.ndarray,
                   labels: np.ndarray, batch_size: int):
  """Returns evaluate(params) -> (accuracy, mean loss) over the whole set.

  The set is padded to a multiple of `batch_size` once and kept on device;
  padded examples are masked out.
  """
  n = len(labels)
  batch_size = min(batch_size, n)
  nb = -(-n // batch_size)
  pad = nb * batch_size - n
  x = jnp.asarray(np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]))
  y = jnp.asarray(np.concatenate([labels, np.zeros((pad,), labels.dtype)]).astype(np.int32))
  mask = jnp.arange(nb * batch_size) < n

  @jax.jit
  def batch_stats(params, x, y, m):
    logits = apply_fn(params, preprocess(x, None))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
    correct = (jnp.argmax(logits, -1) == y)
    return jnp.sum(jnp.where(m, correct, 0)), jnp.sum(jnp.where(m, ce, 0.0))

  def evaluate(params) -> tuple[float, float]:
    correct, loss = 0, 0.0
    for b in range(nb):
      s = slice(b * batch_size, (b + 1) * batch_size)
      c, l = batch_stats(params, x[s], y[s], mask[s])
      correct, loss = correct + c, loss + l
    return float(correct) / n, float(loss) / n

  return evaluate
