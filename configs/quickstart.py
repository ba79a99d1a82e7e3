"""A two-minute real federated run: FedAvg, MLP, Fashion-MNIST, 500 one-class clients.

Run: python main.py --config=configs/quickstart.py --workdir=runs/quickstart
(needs `apt-get install -y dataset-fashion-mnist`, or --config.data.dir
pointing at the Fashion-MNIST IDX files)
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedavg"
  c.data.name = "fashion_mnist"
  c.data.alpha = 0.0
  c.model.name = "mlp"
  c.client.lr = 0.05
  c.rounds = 40
  c.eval_every = 10
  return c
