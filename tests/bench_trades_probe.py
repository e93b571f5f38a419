"""Short-schedule probe of the robust recipe's training loss (run by hand, never collected by pytest):

    PYTHONPATH=. python tests/bench_trades_probe.py {ce,trades}

6 epochs (2 FGSM-RS, 4 PGD-5), one thread, full MNIST training set; clean accuracy on 10,000,
white-box FGSM on the first 2,000 and the complete AutoAttack (top-3 targets, Square 1,000
queries) on the first 500 test images. Writes probe_LOSS.json. A screen for --robust-loss, not
the benchmark: the full recipe is measured by bench_robust.py."""
import json, sys, time
import numpy as np
from secure_ai_mnist.attacks import generate_fgsm
from secure_ai_mnist.autoattack import autoattack
from secure_ai_mnist.common import setup_logging
from secure_ai_mnist.config import parse_config
from secure_ai_mnist.data import load_mnist, to_model_input
from secure_ai_mnist.defenses import train_robust
from secure_ai_mnist.evaluation import accuracy
from secure_ai_mnist.model import configure_tensorflow

loss = sys.argv[1]
cfg = parse_config(["--robust-epochs", "6", "--robust-pgd-epochs", "4", "--robust-loss", loss, "--threads", "1",
                    "--robust-budget-min", "300", "--autoattack-targets", "3", "--square-queries", "1000",
                    "--stability-limit", "0", "--square-limit", "0"])
setup_logging("INFO"); configure_tensorflow(cfg.threads)
data = load_mnist(cfg)
xtr, ytr, xte, yte = to_model_input(data.x_train), data.y_train, to_model_input(data.x_test), data.y_test
t = time.time(); model, rec = train_robust(xtr, ytr, cfg, "defense_robust"); train_s = time.time() - t
clean = accuracy(model, xte, yte, cfg.attack_batch_size)
xf, _ = generate_fgsm(model, xte[:2000], yte[:2000], cfg, "probe")
fgsm = accuracy(model, xf, yte[:2000], cfg.attack_batch_size)
_, aa = autoattack(model, xte[:500], yte[:500], cfg, np.random.default_rng(1), "probe")
out = {"loss": loss, "train_s": round(train_s, 1), "holdout_robust": rec["holdout_robust"], "clean": clean,
       "fgsm_whitebox_2000": fgsm, "aa_500": {k: aa[k] for k in ("robust_accuracy", "per_attack", "checks") if k in aa}}
open(f"probe_{loss}.json", "w").write(json.dumps(out, indent=1, default=str))
print(json.dumps(out, default=str))
