"""Client rules as values: how one client trains from the model it receives.

A `ClientRule` bundles everything an algorithm needs to know about its
clients' local training, so that one federated-averaging algorithm
(algorithms/fedavg.py) and FedSeq/FedSeqInter's chains (fedseq.py,
fedseq_inter.py) run any rule:

- its per-client state (`init_rows`: a `ClientRows` with one row per
  client, or None) and its server-side state (`init_server`);
- `train`: one client's local epochs from the model it receives (its
  anchor), through the engine's hooks, returning the new row and the
  client's contribution to the server side;
- `aggregate`: the server's proposal for the next model from the round's
  models, and the new server-side state.

Constructors, like optax's, close over hyperparameters, check them and
return the value: `plain()`, `prox(mu)`, `dyn(alpha, variant)`,
`scaffold(control)`. FedProx is `fedavg(rule=prox(mu))`, FedSeq+SCAFFOLD is
`fedseq(rule=scaffold())`.
"""

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_seq.core.engine import LocalResult, LocalTrainer, SGD
from fedjax_seq.core.rounds import weighted_mean
from fedjax_seq.core.state import ClientRows, stacked_zeros
from fedjax_seq.errors import InputError

DYN_VARIANTS = ("paper", "original")
SCAFFOLD_CONTROLS = ("gradient", "difference")


class ClientUpdate(NamedTuple):
  """One client's training: the engine's result, its new row and its contribution to the server."""
  result: LocalResult
  row: Any = None           # the client's new per-client row (None: the rule keeps none)
  contribution: Any = None  # what it adds to the rule's server state (None: nothing)


def _no_rows(params, num_clients: int) -> None:
  del params, num_clients


def _nothing(params) -> None:
  del params


def average(server, params, models, weights: jax.Array, contributions, num_clients: int):
  """The default server side: the weighted average of the round's models; no server state."""
  del params, contributions, num_clients
  return weighted_mean(models, weights), server


class ClientRule(NamedTuple):
  """How one client trains from a received model, and the state the rule keeps.

  init_rows(params, K) -> ClientRows | None: every client's initial row.
  init_server(params) -> the rule's server state (SCAFFOLD's c, FedDyn's h) or None.
  train(trainer, params, row, server, data, client_id, key) -> ClientUpdate:
    local training from `params`, the model the client receives.
  zero_contribution(params) -> zeros shaped like one client's contribution, or
    None: chains sum their members' contributions from it.
  aggregate(server, params, models, weights, contributions, K) -> (proposal,
    server): the server's next model before any server optimizer, from the
    round's stacked models, their weights and stacked contributions.
  weighted: whether `aggregate` uses the algorithm's weights (FedDyn's
    server averages uniformly, so it does not).
  momentum_refusal: why the rule refuses local momentum, or None.
  """
  name: str
  train: Callable[..., ClientUpdate]
  init_rows: Callable[[Any, int], ClientRows | None] = _no_rows
  init_server: Callable[[Any], Any] = _nothing
  zero_contribution: Callable[[Any], Any] = _nothing
  aggregate: Callable[..., tuple[Any, Any]] = average
  weighted: bool = True
  momentum_refusal: str | None = None


def check_local_sgd(rule: ClientRule, sgd: SGD | None) -> None:
  """Raises ValueError when the local optimizer has momentum the rule refuses."""
  if rule.momentum_refusal and sgd is not None and sgd.momentum > 0:
    raise InputError(f"{rule.momentum_refusal}; got momentum={sgd.momentum}, use 0",
                     argument="momentum")


def plain() -> ClientRule:
  """Local SGD and nothing else (FedAvg's and FedSeq's clients)."""

  def train(trainer: LocalTrainer, params, row, server, data, client_id, key) -> ClientUpdate:
    del server
    return ClientUpdate(trainer.train(params, data, client_id, key), row)

  return ClientRule("plain", train)


def prox_correction(mu: float) -> Callable:
  """FedProx's proximal term mu * (w - w_anchor), added after momentum (the engine's correction)."""

  def correction(params, anchor):
    return jax.tree.map(lambda w, a: mu * (w - a), params, anchor)

  return correction


def prox(mu: float = 0.01) -> ClientRule:
  """FedProx: every local step adds mu * (w - w_received), after weight decay and momentum.

  As in the original's PGD optimizer, the term enters the momentum buffer
  itself (see core/engine.py); the anchor is the model the client receives.
  """
  if not mu >= 0:
    raise InputError(f"mu must be >= 0, got {mu}", argument="mu")
  correction = prox_correction(mu)

  def train(trainer: LocalTrainer, params, row, server, data, client_id, key) -> ClientUpdate:
    del server
    return ClientUpdate(trainer.train(params, data, client_id, key, ctx=params,
                                      correction=correction), row)

  return ClientRule(f"prox(mu={mu})", train)


def dyn(alpha: float = 0.1, variant: str = "paper") -> ClientRule:
  """FedDyn's client and server, in the paper's form or the FedSeq authors' code.

  Each client keeps g_i (zeros at start); the server keeps h (zeros).
  variant="paper": local objective = task loss - <w, g_i>
    + (alpha/2) ||w - w_received||^2, both terms differentiated; after
    training g_i <- g_i - alpha (w_final - w_received).
  variant="original": the original PyTorch client computes the linear term
    from detached parameters, so only the quadratic term reaches the
    gradient, and applies g_i <- g_i - alpha (w_current - w_received) after
    every local step. Kept to reproduce the published numbers.
  Server, both variants, over the round's n models w_i (uniformly, whatever
  the algorithm's weighting): h <- h - (alpha/K) (sum_i w_i - n w_server);
  proposal = mean_i w_i - h / alpha.
  """
  if not alpha > 0:
    raise InputError(f"alpha must be > 0, got {alpha}", argument="alpha")
  if variant not in DYN_VARIANTS:
    raise InputError(f"unknown variant {variant!r}; valid: {', '.join(DYN_VARIANTS)}",
                     argument="variant")
  quad = lambda w, anchor: jax.tree.map(lambda a, b: alpha * (a - b), w, anchor)

  def train(trainer: LocalTrainer, params, g_i, h, data, client_id, key) -> ClientUpdate:
    del h
    if variant == "paper":
      res = trainer.train(params, data, client_id, key, ctx=(g_i, params),
                          grad_term=lambda w, ctx: jax.tree.map(jnp.subtract, quad(w, ctx[1]),
                                                                ctx[0]))
      return ClientUpdate(res, jax.tree.map(jnp.subtract, g_i, quad(res.params, params)))
    res = trainer.train(params, data, client_id, key, ctx=(g_i, params),
                        grad_term=lambda w, ctx: quad(w, ctx[1]),
                        post_step=lambda w, ctx: (jax.tree.map(jnp.subtract, ctx[0],
                                                               quad(w, ctx[1])), ctx[1]))
    return ClientUpdate(res, res.ctx[0])

  def aggregate(h, params, models, weights, contributions, num_clients: int):
    del weights, contributions
    n = jax.tree.leaves(models)[0].shape[0]
    total = jax.tree.map(lambda m: jnp.sum(m, 0), models)
    h = jax.tree.map(lambda h, s, w: h - alpha / num_clients * (s - n * w), h, total, params)
    return jax.tree.map(lambda s, h: s / n - h / alpha, total, h), h

  return ClientRule(f"dyn(alpha={alpha}, variant={variant})", train,
                    init_rows=stacked_zeros, init_server=lambda p: jax.tree.map(jnp.zeros_like, p),
                    aggregate=aggregate, weighted=False)


def scaffold(control: str = "gradient") -> ClientRule:
  """SCAFFOLD's client and server (ICML 2020), with the original's option I by default.

  Each client keeps a control c_i, the server a control c (zeros at start).
  Local step: gradient + (c - c_i) (+ weight decay). New c_i from the model
  x the client received and its trained model y_i:
    control="gradient" (option I, the original's): the average task-loss
      gradient at x over the client's own batches (a second pass of E
      epochs with fresh shuffles);
    control="difference" (option II, cheaper: no second pass):
      c_i - c + (x - y_i) / (steps * lr), steps = its real local steps.
  The client contributes c_i_new - c_i; server: the weighted average of the
  models, c <- c + (1/K) * sum of the contributions. Plain SGD only: the
  original's SCAFFOLD optimizer has no momentum.
  """
  if control not in SCAFFOLD_CONTROLS:
    raise InputError(f"unknown control {control!r}; valid: {', '.join(SCAFFOLD_CONTROLS)}",
                     argument="control")
  zeros = lambda p: jax.tree.map(jnp.zeros_like, p)

  def train(trainer: LocalTrainer, params, c_i, c, data, client_id, key) -> ClientUpdate:
    res = trainer.train(params, data, client_id, key, ctx=(c, c_i),
                        grad_term=lambda w, ctx: jax.tree.map(jnp.subtract, *ctx))
    if control == "gradient":
      new = trainer.mean_gradient(params, data, client_id, jax.random.fold_in(key, 1))
    else:
      steps_lr = jnp.maximum(res.num_steps, 1).astype(jnp.float32) * trainer.sgd.lr
      new = jax.tree.map(lambda ci, c, x, y: ci - c + (x - y) / steps_lr, c_i, c, params,
                         res.params)
    return ClientUpdate(res, new, jax.tree.map(jnp.subtract, new, c_i))

  def aggregate(c, params, models, weights, contributions, num_clients: int):
    del params
    c = jax.tree.map(lambda c, d: c + jnp.sum(d, 0) / num_clients, c, contributions)
    return weighted_mean(models, weights), c

  return ClientRule(f"scaffold(control={control})", train, init_rows=stacked_zeros,
                    init_server=zeros, zero_contribution=zeros, aggregate=aggregate,
                    momentum_refusal="SCAFFOLD takes no momentum (the original's SCAFFOLD "
                                     "optimizer has none)")
