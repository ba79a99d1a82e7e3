"""Rules, weightings and server optimizers composed: each against a float64 NumPy reference.

FedSeq+SCAFFOLD and FedSeqInter+SCAFFOLD (each member its own c_i and the
server's c, c_i refreshed at the model the member received, the server's c
over the members that trained), SCAFFOLD's option II, the four server
optimizers (FedAvgM, FedAdam, FedYogi, FedAdagrad; Adaptive Federated Optimization's
Algorithm 2) on FedAvg, FedSeq, FedSeqInter and after FedDyn's correction,
their exact resume, and the equalities between formulations.
"""


import jax
import numpy as np
import pytest

import reference as ref
from helpers import assert_trees_close, assert_trees_equal
from fedjax_seq.algorithms import rules
from fedjax_seq.algorithms.fedavg import fedavg, feddyn, scaffold
from fedjax_seq.algorithms.fedseq import fedseq, make_superclients
from fedjax_seq.algorithms.fedseq_inter import fedseq_inter
from fedjax_seq.core import server as server_lib
from fedjax_seq.core.rounds import make_round, round_keys, sample_ids, with_host_client_state

SIZES = [5, 3, 8, 2, 4, 6]
K = len(SIZES)
GROUPS = [[2, 0, 5], [1, 4], [3]]
LR, WD, EPOCHS, BATCH, ALPHA = 0.4, 0.01, 2, 3, 0.3
OPT = dict(lr=0.3, momentum=0.9, b1=0.9, b2=0.99, eps=1e-3)


def trainer():
  return ref.trainer(lr=LR, weight_decay=WD, epochs=EPOCHS, batch_size=BATCH)


def zeros_like(model):
  return tuple(np.zeros_like(x) for x in model)


class NumpyServer:
  """The server optimizers written from their papers, with Delta = proposal - x."""

  def __init__(self, name, model):
    self.name, self.m, self.v = name, zeros_like(model), tuple(np.full_like(x, OPT["eps"] ** 2)
                                                              for x in model)

  def step(self, x, proposal):
    if self.name is None:
      return proposal
    out, m, v = [], [], []
    for xi, pi, mi, vi in zip(x, proposal, self.m, self.v, strict=True):
      d = pi - xi
      if self.name == "momentum":  # FedAvgM: v <- beta v + g, x <- x - lr v, g = -d
        mi = OPT["momentum"] * mi - d
        out.append(xi - OPT["lr"] * mi)
      else:
        mi = OPT["b1"] * mi + (1 - OPT["b1"]) * d
        if self.name == "adagrad":
          vi = vi + d * d
        elif self.name == "yogi":
          vi = vi - (1 - OPT["b2"]) * d * d * np.sign(vi - d * d)
        else:
          vi = OPT["b2"] * vi + (1 - OPT["b2"]) * d * d
        out.append(xi + OPT["lr"] * mi / (np.sqrt(vi) + OPT["eps"]))
      m.append(mi)
      v.append(vi)
    self.m, self.v = tuple(m), tuple(v)
    return tuple(out)


class NumpyClients:
  """Every client's local rule and state in float64: plain, SCAFFOLD (both controls), FedDyn."""

  def __init__(self, images, labels, data, rule, model):
    self.images, self.labels, self.data, self.rule = images, labels, data, rule
    self.c, self.h = zeros_like(model), zeros_like(model)
    self.rows = {i: zeros_like(model) for i in range(K)}

  def train(self, model, cid, key):
    """(trained model, contribution) of client cid from `model`; updates its row."""
    batch_list = ref.batches(self.data, cid, key, EPOCHS, BATCH)
    w0, b0 = model
    args = (self.images, self.labels, batch_list, LR, 0.0, WD)
    if self.rule == "plain":
      return ref.local_sgd(w0, b0, *args), None
    row = self.rows[cid]
    if self.rule == "dyn":
      w, b = ref.local_sgd(w0, b0, *args, grad_term=lambda w, b: (
          ALPHA * (w - w0) - row[0], ALPHA * (b - b0) - row[1]))
      self.rows[cid] = (row[0] - ALPHA * (w - w0), row[1] - ALPHA * (b - b0))
      return (w, b), None
    corr = (self.c[0] - row[0], self.c[1] - row[1])
    w, b = ref.local_sgd(w0, b0, *args, grad_term=lambda *_: corr)
    if self.rule == "scaffold:gradient":
      new = ref.mean_grad(w0, b0, self.images, self.labels,
                          ref.batches(self.data, cid, jax.random.fold_in(key, 1), EPOCHS, BATCH))
    else:  # option II: c_i - c + (x - y_i) / (steps * lr)
      new = tuple(r - c + (x - y) / (len(batch_list) * LR)
                  for r, c, x, y in zip(row, self.c, model, (w, b), strict=True))
    self.rows[cid] = new
    return (w, b), (new[0] - row[0], new[1] - row[1])

  def server(self, x, models, weights, contributions):
    """The rule's proposal from the round's models; updates c or h."""
    if self.rule == "dyn":
      n = len(models)
      total = [sum(m[j] for m in models) for j in range(2)]
      self.h = tuple(self.h[j] - ALPHA / K * (total[j] - n * x[j]) for j in range(2))
      return tuple(total[j] / n - self.h[j] / ALPHA for j in range(2))
    if self.rule.startswith("scaffold"):
      self.c = tuple(self.c[j] + sum(d[j] for d in contributions) / K for j in range(2))
    w = np.asarray(weights, np.float64) / np.sum(weights)
    return tuple(sum(a * m[j] for a, m in zip(w, models, strict=True)) for j in range(2))


def numpy_rounds(keys, rule, *, family="fedavg", optimizer=None, period=None, fraction=0.5):
  """FedAvg (uniform weights for dyn), FedSeq or FedSeqInter rounds (shuffle off) in NumPy."""
  images, labels, data = ref.tiny_data(SIZES)
  x = ref.to_np(ref.init_params())
  clients, server = NumpyClients(images, labels, data, rule, x), NumpyServer(optimizer, x)
  population = K if family == "fedavg" else len(GROUPS)
  n = max(int(fraction * population), 1)
  bank, bank_weights = [x] * n, np.zeros(n)
  for r, key in enumerate(keys, start=1):
    k_sample, k_train = round_keys(key)
    chosen = np.asarray(sample_ids(k_sample, population, n))
    if family == "fedavg":
      outs = [clients.train(x, c, jax.random.fold_in(k_train, c)) for c in chosen]
      weights = [1.0 if rule == "dyn" else SIZES[c] for c in chosen]
    else:
      if family == "inter" and r % period == 0:
        bank, bank_weights = [x] * n, np.zeros(n)
      starts = bank if family == "inter" else [x] * n
      outs = []
      for start, s in zip(starts, chosen, strict=True):
        model, total = start, None
        for cid in GROUPS[s]:
          model, d = clients.train(model, cid, jax.random.fold_in(k_train, cid))
          total = d if total is None else tuple(t + e for t, e in zip(total, d, strict=True))
        outs.append((model, total))
      weights = [sum(SIZES[c] for c in GROUPS[s]) for s in chosen]
      if family == "inter":
        bank, bank_weights = [o[0] for o in outs], bank_weights + weights
        weights = bank_weights
    proposal = clients.server(x, [o[0] for o in outs], weights, [o[1] for o in outs])
    x = server.step(x, proposal)
  return x, clients


def close(tree, expected, rtol=2e-5, atol=2e-6):
  got = ref.to_np(tree)
  for g, e in zip(got, expected, strict=True):
    np.testing.assert_allclose(g, e, rtol=rtol, atol=atol)


def run(alg, keys, strategy="vmap"):
  _, _, data = ref.tiny_data(SIZES)
  round_fn = make_round(alg, strategy)
  state = alg.init(ref.init_params())
  for key in keys:
    state, metrics = round_fn(state, data, key)
  assert np.isfinite(float(metrics["train_loss"]))
  return state


def build(family, rule, optimizer=None, period="never", fraction=0.5):
  opt = None if optimizer is None else server_lib.server_optimizer(optimizer, **OPT)
  sc = make_superclients([np.array(g) for g in GROUPS], np.array(SIZES))
  if family == "fedavg":
    return fedavg(trainer(), K, fraction, rule=rule, server_optimizer=opt,
                  weighting="uniform" if not rule.weighted else "size")
  if family == "fedseq":
    return fedseq(trainer(), sc, K, fraction, rule=rule, shuffle=False, server_optimizer=opt)
  return fedseq_inter(trainer(), sc, K, fraction, rule=rule, shuffle=False, period=period,
                      server_optimizer=opt)


def check_scaffold_state(state, clients):
  close(state.server, clients.c)
  for i in range(K):
    close(jax.tree.map(lambda x: x[i], state.clients.rows), clients.rows[i])


KEYS = [jax.random.key(30 + r) for r in range(3)]


@pytest.mark.parametrize("control", rules.SCAFFOLD_CONTROLS)
@pytest.mark.parametrize("family,period", [("fedseq", None), ("inter", "never"), ("inter", 2)])
def test_fedseq_family_with_scaffold_matches_numpy(family, period, control):
  """Three rounds; FedSeqInter with a bank that never resets, and one reset at round 2."""
  state = run(build(family, rules.scaffold(control), period=period, fraction=0.67), KEYS)
  x, clients = numpy_rounds(KEYS, f"scaffold:{control}", family=family,
                            period=period if period != "never" else 10**9, fraction=0.67)
  close(state.params, x)
  check_scaffold_state(state, clients)
  assert np.abs(clients.c[0]).max() > 1e-3  # the server's control really moved


def test_scaffold_option_two_matches_numpy():
  for strategy in ("vmap", "loop"):
    state = run(scaffold(trainer(), K, 0.5, control="difference"), KEYS[:2], strategy)
    x, clients = numpy_rounds(KEYS[:2], "scaffold:difference")
    close(state.params, x)
    check_scaffold_state(state, clients)


def test_scaffold_controls_agree_on_the_first_round_models_only():
  """Both controls train the same first round (c = c_i = 0) and then differ."""
  a = run(scaffold(trainer(), K, 0.5, control="gradient"), KEYS[:1])
  b = run(scaffold(trainer(), K, 0.5, control="difference"), KEYS[:1])
  assert_trees_equal(a.params, b.params)
  assert np.abs(ref.to_np(a.server)[0] - ref.to_np(b.server)[0]).max() > 1e-4


def test_fedseq_with_one_member_superclients_is_scaffold():
  """Superclients of one client each: FedSeq+SCAFFOLD is SCAFFOLD, c and c_i included."""
  _, _, data = ref.tiny_data(SIZES)
  sc = make_superclients([np.array([k]) for k in range(K)], np.array(SIZES))
  a = fedseq(trainer(), sc, K, 0.5, rule=rules.scaffold())
  b = scaffold(trainer(), K, 0.5)
  sa, sb = run(a, KEYS), run(b, KEYS)
  assert_trees_close(sa, sb, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("optimizer", ["momentum", "adam", "yogi", "adagrad"])
def test_server_optimizers_on_fedavg_match_numpy(optimizer):
  state = run(build("fedavg", rules.plain(), optimizer), KEYS)
  x, _ = numpy_rounds(KEYS, "plain", optimizer=optimizer)
  close(state.params, x)


@pytest.mark.parametrize("family,rule,optimizer", [
    ("fedseq", "plain", "adam"), ("inter", "plain", "yogi"), ("fedseq", "scaffold:gradient",
                                                                "momentum"),
    ("fedavg", "dyn", "adam"), ("fedseq", "dyn", "adagrad")])
def test_server_optimizers_compose_with_every_family_and_rule(family, rule, optimizer):
  """FedSeq's proposal is over superclients, FedSeqInter's over bank slots; FedDyn's
  correction (proposal = mean - h/alpha) comes before the optimizer's step."""
  lib_rule = {"plain": rules.plain(), "scaffold:gradient": rules.scaffold(),
              "dyn": rules.dyn(ALPHA)}[rule]
  fraction = 0.5 if family == "fedavg" else 0.67
  state = run(build(family, lib_rule, optimizer, period=2, fraction=fraction), KEYS)
  x, clients = numpy_rounds(KEYS, rule, family=family, optimizer=optimizer, period=2,
                            fraction=fraction)
  close(state.params, x)
  if rule == "dyn":
    close(state.server, clients.h, atol=1e-6)


def test_plain_sgd_with_lr_one_is_no_optimizer():
  """The default server step takes the proposal as is (bit for bit: tests/test_bit_identity.py);
  SGD with another lr is x - lr * (x - proposal)."""
  assert server_lib.server_optimizer("sgd", lr=1.0) is None
  state = run(build("fedavg", rules.plain()), KEYS[:1])
  half = fedavg(trainer(), K, 0.5, server_optimizer=server_lib.server_optimizer("sgd", lr=0.5))
  x0 = ref.to_np(ref.init_params())
  close(run(half, KEYS[:1]).params, tuple(a + 0.5 * (p - a)
                                          for a, p in zip(x0, ref.to_np(state.params),
                                                          strict=True)))


def test_server_optimizer_state_resumes_exactly(tmp_path):
  """Checkpointed after round 1 (Adam's moments included), restored, continued: bit for bit."""
  _, _, data = ref.tiny_data(SIZES)
  alg = build("fedseq", rules.scaffold(), "adam", fraction=0.67)
  full, part = ref.resumed_and_uninterrupted(alg, make_round(alg, "loop"), data, KEYS,
                                             str(tmp_path))
  assert isinstance(part.opt[0], server_lib.FedOptState)
  assert_trees_equal(full, part)


@pytest.mark.parametrize("family", ["fedseq", "inter"])
def test_host_resident_scaffold_rows_equal_device_resident(family):
  _, _, data = ref.tiny_data(SIZES)
  alg = build(family, rules.scaffold(), period=2, fraction=0.67)
  on_device, on_host = make_round(alg, "loop"), with_host_client_state(alg, make_round(alg, "loop"))
  a, b = alg.init(ref.init_params()), alg.init(ref.init_params())
  for key in KEYS:
    a, _ = on_device(a, data, key)
    b, _ = on_host(b, data, key)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(b.clients))
  assert_trees_close(a, b, rtol=1e-6, atol=1e-7)


def test_constructors_refuse_bad_values_with_plain_messages():
  cases = [(lambda: rules.prox(-1.0), "mu must be >= 0, got -1.0"),
           (lambda: rules.dyn(0.0), "alpha must be > 0, got 0.0"),
           (lambda: rules.dyn(0.1, "x"), "unknown variant 'x'; valid: paper, original"),
           (lambda: rules.scaffold("x"), "unknown control 'x'; valid: gradient, difference"),
           (lambda: server_lib.server_optimizer("adamw"), "unknown optimizer 'adamw'"),
           (lambda: server_lib.server_optimizer("adam", lr=0.0), "lr must be > 0"),
           (lambda: server_lib.server_optimizer("yogi", b2=1.0), r"b2 must be in \[0, 1\)"),
           (lambda: scaffold(ref.trainer(momentum=0.5), K, 0.5), "SCAFFOLD takes no momentum"),
           (lambda: fedavg(trainer(), K, 0.5, rule=rules.dyn()), "weighting='uniform'")]
  for make, message in cases:
    with pytest.raises(ValueError, match=message):
      make()
  feddyn(trainer(), K, 0.5)  # uniform weighting, as FedDyn's server update

