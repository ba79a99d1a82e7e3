"""The masked local-training engine shared by every algorithm.

`make_local_trainer` closes over the model and the SGD hyperparameters and
returns a pure function that runs E epochs of minibatch SGD on one client,
starting from given parameters. Clients have different sizes: every client is
padded to the same number of steps, a padded step leaves the whole state
bit-identical, and a padded example contributes nothing to the loss. Shapes
depend only on the configuration, so the round compiles once.

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

from fedjax_seq.data.federated import FedData, Preprocess, client_schedule

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
  idx, mask = client_schedule(k_order, data.client_idx[client_id],
                              data.client_sizes[client_id], local_epochs, batch_size)
  # Keyed by (epoch, step in epoch) so padding a client changes no real step.
  spe = idx.shape[0] // local_epochs
  step_keys = jax.vmap(lambda t: jax.random.fold_in(
      jax.random.fold_in(k_aug, t // spe), t % spe))(jnp.arange(idx.shape[0]))
  if max_steps:  # real steps first (padded ones are no-ops anywhere), then cut
    order = jnp.argsort(~mask.any(axis=1), stable=True)[:max_steps]
    idx, mask, step_keys = idx[order], mask[order], step_keys[order]
  return idx, mask, step_keys


def sgd_step(grad_fn: Callable, sgd: SGD, lr, data: FedData, grad_term: Correction | None,
             correction: Correction | None, post_step: PostStep | None) -> Callable:
  """The `lax.scan` body of local SGD: one masked step (see the module docstring).

  carry = (params, momentum buffer, ctx, loss sum, real steps); a step whose
  batch holds no real example leaves the carry exactly as it was.
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
    return step_batches(data, client_id, key, local_epochs=local_epochs,
                        batch_size=batch_size, max_steps=max_steps)

  def train(params: Params, data: FedData, client_id: jax.Array, key: jax.Array,
            ctx: Ctx = None, grad_term: Correction | None = None,
            correction: Correction | None = None,
            post_step: PostStep | None = None,
            lr_scale: jax.Array | None = None) -> LocalResult:
    """`lr_scale` multiplies the learning rate of every step (a schedule's factor)."""
    lr = sgd.lr if lr_scale is None else sgd.lr * lr_scale
    idx, mask, step_keys = batches(data, client_id, key)
    momentum = (jax.tree.map(jnp.zeros_like, params) if sgd.momentum else None)
    step = sgd_step(grad_fn, sgd, lr, data, grad_term, correction, post_step)
    init = (params, momentum, ctx, jnp.zeros((), jnp.float32), jnp.zeros((), jnp.int32))
    (params, _, ctx, loss_sum, steps), _ = jax.lax.scan(
        step, init, (idx, mask, step_keys), unroll=unroll)
    return LocalResult(params, ctx, loss_sum / jnp.maximum(steps, 1), steps)

  def mean_gradient(params: Params, data: FedData, client_id: jax.Array,
                    key: jax.Array) -> Params:
    """Average task-loss gradient at fixed `params` over the client's batches.

    One pass of `local_epochs` epochs of fresh batches, as the original
    SCAFFOLD client's "option 1"; only the client's real batches count.
    """
    idx, mask, step_keys = batches(data, client_id, key)

    def step(carry, inputs):
      total, steps = carry
      b_idx, b_mask, b_key = inputs
      _, g = grad_fn(params, data.images[b_idx], data.labels[b_idx], b_mask, b_key)
      real = b_mask.any()
      total = jax.tree.map(lambda t, g: t + jnp.where(real, g, 0.0), total, g)
      return (total, steps + real.astype(jnp.int32)), None

    zeros = jax.tree.map(jnp.zeros_like, params)
    (total, steps), _ = jax.lax.scan(step, (zeros, jnp.zeros((), jnp.int32)),
                                     (idx, mask, step_keys), unroll=unroll)
    return jax.tree.map(lambda t: t / jnp.maximum(steps, 1), total)

  return LocalTrainer(train, mean_gradient, sgd)


STRATEGIES = ("auto", "vmap", "loop")


def resolve_strategy(strategy: str, backend: str | None = None) -> str:
  """"auto": vmap across clients on accelerators, a per-client loop on CPU.

  On XLA:CPU vmapping per-client weights turns convolutions into slow grouped
  convolutions and dense layers into batched matmuls that are no faster than
  a loop of jitted per-client updates (benchmarks/RESULTS.md).
  """
  backend = backend or jax.default_backend()
  if strategy == "auto":  # several processes share one mesh, which needs vmap
    return "loop" if backend == "cpu" and jax.process_count() == 1 else "vmap"
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
