"""The paper's point in a minute or two: FedSeq vs FedAvg on 500 one-class Fashion-MNIST clients.

Run: python main.py --config=configs/quickstart.py --workdir=runs/quickstart
(about a minute and a half on a 2-core CPU, FedSeq's superclient formation included)
(needs `apt-get install -y dataset-fashion-mnist`, or --config.data.dir
pointing at the Fashion-MNIST IDX files). FedSeq's results go to WORKDIR,
FedAvg's (same clients, same rounds) to WORKDIR/fedavg; both final
accuracies are printed side by side.
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq"
  c.compare_with = "fedavg"
  c.data.name = "fashion_mnist"
  c.data.alpha = 0.0  # pathological: each client holds 120 images of one class
  c.model.name = "mlp"
  c.fedseq.evaluator_model = "mlp"
  c.client.lr = 0.05
  c.rounds = 60
  c.eval_every = 12
  return c
