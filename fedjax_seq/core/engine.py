"""The local-training engine shared by every algorithm.

`make_local_trainer` closes over the model and the SGD hyperparameters and
returns a pure function that runs E epochs of minibatch SGD on one client,
starting from given parameters. Batches follow PyTorch's shuffled DataLoader:
each epoch's last batch holds the remainder, and its loss is the mean over
its real examples.

Two schedules, both with shapes fixed by the configuration (the round
compiles once):

  exact   every client holds the same number n of examples (the paper's
          100; `FedData.equal_sizes`): each epoch is n // B full batches
          and, when B does not divide n, one batch of the n % B real
          examples, computed at that size.
  masked  clients of different sizes: every client is padded to the
          largest client's steps (or to `FedData.size_cap`'s, which the
          loop strategy sets per participant, bucketed) and every batch
          to B; a padded step leaves the whole state bit-identical and a
          padded example contributes nothing to the loss.

SGD follows PyTorch's `torch.optim.SGD` (dampening 0, no Nesterov):
g = grad(loss) + grad_term(w); d = g + wd * w; buf = momentum * buf + d
(buf = d on the first step); buf = buf + correction(w); w -= lr * buf.
Algorithms plug in through two hooks: `grad_term`, the gradient of an extra
loss term (FedDyn's regulariser, SCAFFOLD's control variate), and
`correction`, added after momentum as the original FedProx (PGD) optimizer
adds its proximal term: into the momentum buffer itself (its `d_p` is the
buffer), so with momentum the term accumulates and keeps acting, decayed, in
later steps; without momentum it is simply added to the step. A `post_step`
hook updates per-client state after every real step (the original FedDyn
client does).
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_seq.data.federated import FedData, Preprocess, client_schedule, steps_per_epoch

Params = Any
Ctx = Any
# grad_term(params, ctx) / correction(params, ctx) -> pytree like params.
Correction = Callable[[Params, Ctx], Params]
# post_step(new_params, ctx) -> ctx, run after each real step.
PostStep = Callable[[Params, Ctx], Ctx]


class SGD(NamedTuple):
  lr: float
  momentum: float = 0.0
  weight_decay: float = 0.0


class LocalTrainer(NamedTuple):
  """`train` runs local SGD; `mean_gradient` averages gradients at fixed params.

  `sgd` is the local optimizer's settings, for client rules whose updates
  depend on them (SCAFFOLD's control by difference divides by the lr).
  """
  train: Callable
  mean_gradient: Callable
  sgd: SGD | None = None


class LocalResult(NamedTuple):
  params: Params
  ctx: Ctx
  loss: jax.Array       # mean training loss over the client's real steps
  num_steps: jax.Array  # real steps taken


def tree_where(pred: jax.Array, new, old):
  """`new` where `pred` holds, else `old`, leaf by leaf (masked no-op steps)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), new, old)


def masked_loss_fn(apply_fn: Callable, preprocess: Preprocess):
  """loss(params, images_u8, labels, mask, key): mean cross-entropy over real examples."""

  def loss(params, images, labels, mask, key):
    logits = apply_fn(params, preprocess(images, key))
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    return jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1)

  return loss


def step_batches(data: FedData, client_id: jax.Array, key: jax.Array, *, local_epochs: int,
                 batch_size: int, max_steps: int = 0):
  """Example indices, masks and augmentation keys of every local step of one client."""
  k_order, k_aug = jax.random.split(key)
  row, size = data.client_idx[client_id], data.client_sizes[client_id]
  if data.size_cap:  # the schedule does not depend on the row's padding (client_schedule)
    row, size = row[:data.size_cap], jnp.minimum(size, data.size_cap)
  idx, mask = client_schedule(k_order, row, size, local_epochs, batch_size)
  # Keyed by (epoch, step in epoch) so padding a client changes no real step.
  spe = idx.shape[0] // local_epochs
  step_keys = jax.vmap(lambda t: jax.random.fold_in(
      jax.random.fold_in(k_aug, t // spe), t % spe))(jnp.arange(idx.shape[0]))
  if max_steps:  # real steps first (padded ones are no-ops anywhere), then cut
    order = jnp.argsort(~mask.any(axis=1), stable=True)[:max_steps]
    idx, mask, step_keys = idx[order], mask[order], step_keys[order]
  return idx, mask, step_keys


def last_batch_size(data: FedData, *, local_epochs: int, batch_size: int,
                    max_steps: int = 0) -> int:
  """The real size of each epoch's last batch under the exact schedule, 0 for the masked one.

  Exact needs equal-size clients and no step cap that cuts into their steps.
  """
  if not data.equal_sizes:
    return 0
  spe = steps_per_epoch(data.max_client_size, batch_size)
  if max_steps and max_steps < local_epochs * spe:
    return 0
  return data.max_client_size - (spe - 1) * batch_size


def scan_steps(step: Callable, carry, schedule, *, last: int, local_epochs: int,
               unroll: int | bool):
  """Runs `step` over a client's (indices, masks, keys), returns the final carry.

  last = 0: every step at the batch size B (masked schedule). last > 0
  (exact schedule): each epoch's final step takes only its first `last`
  examples, the real ones, so no padded example is computed.
  """
  batch = schedule[0].shape[1]
  if not last or last == batch:
    return jax.lax.scan(step, carry, schedule, unroll=unroll)[0]
  per_epoch = jax.tree.map(lambda x: x.reshape((local_epochs, -1) + x.shape[1:]), schedule)

  def epoch(carry, xs):
    idx, mask, keys = xs
    if idx.shape[0] > 1:
      carry = jax.lax.scan(step, carry, (idx[:-1], mask[:-1], keys[:-1]), unroll=unroll)[0]
    return step(carry, (idx[-1, :last], mask[-1, :last], keys[-1]))[0], None

  if local_epochs == 1:
    return epoch(carry, jax.tree.map(lambda x: x[0], per_epoch))[0]
  return jax.lax.scan(epoch, carry, per_epoch, unroll=unroll)[0]


def sgd_step(grad_fn: Callable, sgd: SGD, lr, data: FedData, grad_term: Correction | None,
             correction: Correction | None, post_step: PostStep | None,
             masked: bool = True) -> Callable:
  """The `lax.scan` body of local SGD: one step (see the module docstring).

  carry = (params, momentum buffer, ctx, loss sum, real steps). `masked`: a
  step whose batch holds no real example leaves the carry exactly as it
  was; without it (exact schedule) every step is real.
  """

  def step(carry, inputs):
    params, buf, ctx, loss_sum, steps = carry
    b_idx, b_mask, b_key = inputs
    loss, g = grad_fn(params, data.images[b_idx], data.labels[b_idx], b_mask, b_key)
    if grad_term is not None:
      g = jax.tree.map(jnp.add, g, grad_term(params, ctx))
    d = jax.tree.map(lambda g, w: g + sgd.weight_decay * w, g, params)
    new_buf = buf
    if sgd.momentum:
      new_buf = jax.tree.map(lambda b, d: sgd.momentum * b + d, buf, d)
      d = new_buf
    if correction is not None:
      d = jax.tree.map(jnp.add, d, correction(params, ctx))
      if sgd.momentum:  # the original PGD adds it to the buffer itself, in place
        new_buf = d
    new_params = jax.tree.map(lambda w, d: w - lr * d, params, d)
    new_ctx = post_step(new_params, ctx) if post_step is not None else ctx
    if not masked:
      return (new_params, new_buf, new_ctx, loss_sum + loss, steps + 1), None
    real = b_mask.any()
    carry = (tree_where(real, new_params, params), tree_where(real, new_buf, buf),
             tree_where(real, new_ctx, ctx), loss_sum + jnp.where(real, loss, 0.0),
             steps + real.astype(jnp.int32))
    return carry, None

  return step


def make_local_trainer(apply_fn: Callable, preprocess: Preprocess, sgd: SGD, *,
                       local_epochs: int, batch_size: int, unroll: int | bool = 1,
                       max_steps: int = 0):
  """Builds the engine for one model and one set of local hyperparameters.

  `train(params, data, client_id, key, ctx, grad_term, correction,
  post_step) -> LocalResult` runs the client's E epochs from `params`.

  `unroll` is passed to `lax.scan` over the steps (see `resolve_unroll`).
  `max_steps` > 0 caps every client at its first `max_steps` steps: with
  ragged clients (e.g. Dirichlet splits, K = 10,000) the step loop otherwise
  runs E * ceil(largest client / B) steps for everyone, padded ones as
  no-ops. Clients with fewer real steps are unaffected.
  """
  loss_fn = masked_loss_fn(apply_fn, preprocess)
  grad_fn = jax.value_and_grad(loss_fn)

  def batches(data: FedData, client_id: jax.Array, key: jax.Array):
    """The client's schedule, and its last batch's real size (0: masked schedule)."""
    last = last_batch_size(data, local_epochs=local_epochs, batch_size=batch_size,
                           max_steps=max_steps)
    return step_batches(data, client_id, key, local_epochs=local_epochs,
                        batch_size=batch_size, max_steps=0 if last else max_steps), last

  def run(step, carry, schedule, last):
    return scan_steps(step, carry, schedule, last=last, local_epochs=local_epochs,
                      unroll=unroll)

  def train(params: Params, data: FedData, client_id: jax.Array, key: jax.Array,
            ctx: Ctx = None, grad_term: Correction | None = None,
            correction: Correction | None = None,
            post_step: PostStep | None = None,
            lr_scale: jax.Array | None = None) -> LocalResult:
    """`lr_scale` multiplies the learning rate of every step (a schedule's factor)."""
    lr = sgd.lr if lr_scale is None else sgd.lr * lr_scale
    schedule, last = batches(data, client_id, key)
    momentum = (jax.tree.map(jnp.zeros_like, params) if sgd.momentum else None)
    step = sgd_step(grad_fn, sgd, lr, data, grad_term, correction, post_step,
                    masked=not last)
    init = (params, momentum, ctx, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    params, _, ctx, loss_sum, steps = run(step, init, schedule, last)
    return LocalResult(params, ctx, loss_sum / jnp.maximum(steps, 1), steps)

  def mean_gradient(params: Params, data: FedData, client_id: jax.Array,
                    key: jax.Array) -> Params:
    """Average task-loss gradient at fixed `params` over the client's batches.

    One pass of `local_epochs` epochs of fresh batches, as the original
    SCAFFOLD client's "option 1"; only the client's real batches count.
    """
    schedule, last = batches(data, client_id, key)

    def step(carry, inputs):
      total, steps = carry
      b_idx, b_mask, b_key = inputs
      _, g = grad_fn(params, data.images[b_idx], data.labels[b_idx], b_mask, b_key)
      if last:  # exact schedule: every step is real
        return (jax.tree.map(jnp.add, total, g), steps + 1), None
      real = b_mask.any()
      total = jax.tree.map(lambda t, g: t + jnp.where(real, g, 0.0), total, g)
      return (total, steps + real.astype(jnp.int32)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    total, steps = run(step, (zeros, jnp.zeros((), jnp.int32)), schedule, last)
    return jax.tree.map(lambda t: t / jnp.maximum(steps, 1), total)

  return LocalTrainer(train, mean_gradient, sgd)


STRATEGIES = ("auto", "vmap", "loop")


def resolve_strategy(strategy: str, *, convolutional: bool, equal_sizes: bool,
                     backend: str | None = None) -> str:
  """"auto": vmap across clients, except on CPU for a convolutional model or for clients of
  different sizes: a per-client loop.

  On XLA:CPU vmapping per-client weights turns convolutions into grouped
  convolutions, slower than a loop of per-client updates; a dense model's
  batched matmuls are faster than the loop when every client computes the
  same steps, but vmap pads every client to the largest one's steps, where
  the loop runs each client for its size bucket's (benchmarks/RESULTS.md).
  """
  backend = backend or jax.default_backend()
  if strategy == "auto":  # several processes share one mesh, which needs vmap
    loop = (backend == "cpu" and (convolutional or not equal_sizes)
            and jax.process_count() == 1)
    return "loop" if loop else "vmap"
  return strategy


def resolve_unroll(unroll: str | int, uses_lax_conv: bool, backend: str | None = None) -> int | bool:
  """"auto": unroll the local-step loop only where it pays.

  XLA:CPU misses its fast convolution path inside a while loop, so a model
  with `lax.conv` layers is unrolled on CPU. im2col convolutions and dense
  layers run as fast rolled (benchmarks/RESULTS.md), and a rolled loop
  compiles in constant time however many steps a client takes.
  """
  backend = backend or jax.default_backend()
  if unroll == "auto":
    return True if (backend == "cpu" and uses_lax_conv) else 1
  return int(unroll)
