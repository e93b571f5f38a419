"""secure-ai-mnist: the stages of the MNIST security experiment (data, model, backdoor,
attacks, defenses, evaluation, plots, report, outputs). ``secure_ai_mnist_main.py`` runs them in order."""

__version__ = "0.2.0"
