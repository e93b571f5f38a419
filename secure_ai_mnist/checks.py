"""Sanity checks from the adversarial-evaluation literature, computed from a run's measured
results: passed is True, False, or None (not applicable); a False means a robustness number in
the run is not to be trusted."""

from __future__ import annotations

from typing import Any

from .config import Config

def sanity_checks(
    models: dict[str, Any], transfer: dict[str, dict[str, dict[str, float]]], curves: dict[str, Any], cfg: Config,
    autoattack: dict[str, Any] | None = None,
) -> dict[str, dict[str, Any]]:
    """Checks from the adversarial-evaluation literature; passed is True, False, or None (not applicable).

    A False means a robustness number in this run is not to be trusted.
    """
    checks: dict[str, dict[str, Any]] = {}
    same_eps = abs(cfg.pgd_eps - cfg.fgsm_eps) < 1e-12
    for name in transfer["pgd"]:
        pgd_acc, fgsm_acc = transfer["pgd"][name][name], transfer["fgsm"][name][name]
        checks[f"pgd_not_weaker_than_fgsm_{name}"] = {
            "description": f"{name}: white-box PGD accuracy <= white-box FGSM accuracy on the same images and eps",
            "passed": (pgd_acc <= fgsm_acc) if same_eps else None,
            "pgd_accuracy": pgd_acc, "fgsm_accuracy": fgsm_acc,
        }
    for attack, table in transfer.items():
        for target in table:
            whitebox = table[target][target]
            transferred = {source: table[source][target] for source in table if source != target}
            checks[f"whitebox_not_weaker_than_transfer_{attack}_{target}"] = {
                "description": f"{target}: {attack.upper()} crafted on the model itself is at least as strong as "
                               f"{attack.upper()} crafted on any other model",
                "passed": all(whitebox <= acc for acc in transferred.values()),
                "whitebox_accuracy": whitebox, "transfer_accuracy": transferred,
            }
    defense = models["defense_fgsm"]["eval"]
    wb, moved = defense["fgsm_whitebox"]["accuracy"], defense["fgsm_transfer_from_baseline"]["accuracy"]
    checks["whitebox_not_weaker_than_transfer_full_test_set_defense_fgsm"] = {
        "description": "defense_fgsm on the full test set: FGSM crafted on the model itself is at least as strong "
                       "as FGSM transferred from the baseline",
        "passed": wb <= moved, "whitebox_accuracy": wb, "transfer_accuracy": moved,
    }
    if 1.0 in curves["eps"]:
        at_one = {name: accs[curves["eps"].index(1.0)] for name, accs in curves["pgd"].items()}
        checks["accuracy_near_chance_at_eps_1"] = {
            "description": "at eps 1.0 the attacker can draw any image, so PGD accuracy must fall to chance "
                           "(<= 0.15) or below",
            "passed": all(acc <= 0.15 for acc in at_one.values()), "pgd_accuracy": at_one,
        }
    checks["eps_bound_and_pixel_range"] = {
        "description": "every generated adversarial set stays within its eps (L-inf) and inside [0, 1]; "
                       "the run stops with an error otherwise",
        "passed": True,
    }
    tolerance = 1 / max(curves["n"], 1)
    checks["eps_curve_monotone"] = {
        "description": "white-box PGD accuracy does not rise with eps (one image of slack per step)",
        "passed": all(b <= a + tolerance for accs in curves["pgd"].values() for a, b in zip(accs, accs[1:])),
        "pgd_accuracy": curves["pgd"],
    }
    if autoattack:
        for name, result in autoattack["per_model"].items():
            checks.update(attack_failure_checks(name, result, transfer))
    return checks


def attack_failure_checks(name: str, result: dict[str, Any], transfer: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Indicators of attack failure (Carlini et al. 2019; Pintor et al. 2022) for one model's
    AutoAttack result: attack strength order, Square against the white-box attacks, convergence
    when the iterations double, and zero input gradients. passed None = not applicable."""
    every = result.get("whitebox_all", result)  # the white-box figures on all the PGD images, as FGSM and PGD
    order = {"fgsm": transfer["fgsm"][name][name], "pgd": transfer["pgd"][name][name],
             "apgd_ce": every["per_attack"]["apgd_ce"], "whitebox_ensemble": every["per_attack"]["fab_t"]}
    values = list(order.values())
    checks = {f"attack_strength_order_{name}": {
        "description": f"{name}: FGSM >= PGD >= APGD-CE >= APGD-CE + APGD-T + FAB-T accuracy on the same images",
        "passed": all(a >= b for a, b in zip(values, values[1:])), **{f"{k}_accuracy": v for k, v in order.items()}}}
    attacks = result["per_attack"]
    if "square" in attacks:
        drop = attacks["fab_t"] - attacks["square"]
        checks[f"square_not_stronger_than_whitebox_{name}"] = {
            "description": f"{name}: black-box Square lowers the white-box attacks' accuracy by at most 0.5 points "
                           "(more means the gradients mislead the white-box attacks)",
            "passed": None if attacks["fab_t"] == 0 else drop <= 0.005, "drop_points": 100 * drop,
            "n": result["n"]}
    stability = result["checks"]["stability"]
    if stability["n"]:
        move = abs(stability["accuracy"][1] - stability["accuracy"][0])
        checks[f"attack_converged_{name}"] = {
            "description": f"{name}: doubling the APGD iterations changes the robust accuracy by < 0.5 points",
            "passed": move < 0.005, "change_points": 100 * move, **stability}
    share = result["checks"]["zero_gradient_share"]
    checks[f"no_zero_gradients_{name}"] = {
        "description": f"{name}: under 1% of the points have an all-zero input gradient (gradient masking)",
        "passed": share < 0.01, "zero_gradient_share": share}
    return checks
