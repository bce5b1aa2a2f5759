"""The conformal rule's guarantee, checked on synthetic exchangeable scores: over many draws
of calibration and test images, the share of known images rejected stays at most alpha, for
one voting detector and for the union of several, and spreads as the conformal (Beta) law
says."""

import json
import math

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import OmegaConf

from osr.calibrate import calibration_config
from osr.scoring.conformal import Conformal, conformal_rank, smooth_rank, smooth_rank_threshold
from osr.scoring.thresholds import MeanStd
from osr.train import train
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
from osr.utils.config import CONFIG_DIR
from osr.utils.errors import OSRError
from tests.conftest import TINY_TRAINING
from tests.test_calibration import run_calibrate

ALPHA = 0.02
N_CAL, N_TEST, DRAWS = 1000, 2000, 300


def correlated_scores(m: int, n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
    """m detectors' float32 scores of n known images: correlated (a shared component), of
    different scales and shapes (Gaussian, exponential, log-normal)."""
    shared = torch.randn(n, generator=g)
    scores = {}
    for d in range(m):
        z = 0.6 * shared + 0.8 * torch.randn(n, generator=g)
        shape = (z, torch.exp(z), -torch.log1p(-torch.special.ndtr(z)))[d % 3]
        scores[f"s{d}"] = (shape * (d + 1) + 10 * d).float()
    return scores


def rejection_rates(m: int, alpha: float, seed: int = 0) -> np.ndarray:
    """Known test rejection of the union rule over DRAWS fresh calibration and test sets."""
    g = torch.Generator().manual_seed(seed)
    rule = Conformal(alpha=alpha, seed=seed)
    rates = []
    for _ in range(DRAWS):
        scores = correlated_scores(m, N_CAL + N_TEST, g)
        cal = {name: s[:N_CAL] for name, s in scores.items()}
        thresholds, _ = rule.fit_union_record(cal)
        rejected = torch.zeros(N_TEST, dtype=torch.bool)
        for name, s in scores.items():  # OpenSetModule.decide's rule
            rejected |= s[N_CAL:] > torch.tensor(thresholds[name], dtype=torch.float32)
        rates.append(rejected.double().mean().item())
    return np.array(rates)


def threshold_part(m: int) -> int:
    return N_CAL if m == 1 else N_CAL - round(0.5 * N_CAL)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_union_rejects_at_most_alpha_and_spreads_as_the_beta_law(m):
    rates = rejection_rates(m, ALPHA)
    n = threshold_part(m)
    k = conformal_rank(n, ALPHA)
    # given the calibration draw, a fresh image is rejected with probability
    # Beta(n + 1 - k, k); the test set adds binomial noise around it
    a, b = n + 1 - k, k
    beta_mean = a / (a + b)
    beta_var = a * b / ((a + b) ** 2 * (a + b + 1))
    expected_var = beta_var + (beta_mean * (1 - beta_mean) - beta_var) / N_TEST
    standard_error = math.sqrt(expected_var / DRAWS)
    assert beta_mean <= ALPHA
    assert rates.mean() <= ALPHA + 3 * standard_error
    assert rates.mean() == pytest.approx(beta_mean, abs=3 * standard_error)
    # the sample variance of DRAWS rates: its relative standard error is about sqrt(2 / DRAWS)
    assert rates.var(ddof=1) == pytest.approx(expected_var, rel=4 * math.sqrt(2 / DRAWS))


def test_the_rank_is_exactly_the_conformal_one():
    assert conformal_rank(99, 0.01) == 99  # ceil(100 * 0.99)
    assert conformal_rank(999, 0.01) == 990
    assert conformal_rank(1000, 0.02) == 981  # ceil(1001 * 0.98) = ceil(980.98)
    assert conformal_rank(19, 0.05) == 19
    with pytest.raises(OSRError, match="calibration.alpha=0.01 needs at least 99"):
        conformal_rank(98, 0.01)
    # one detector: the k-th smallest of the validation scores
    scores = torch.randperm(200).float()
    thresholds, _ = Conformal(alpha=0.1).fit_union_record({"s": scores})
    assert thresholds == {"s": float(conformal_rank(200, 0.1) - 1)}


def test_smooth_rank_is_increasing_and_its_threshold_its_inverse():
    g = torch.Generator().manual_seed(0)
    ranked = torch.randn(50, generator=g, dtype=torch.float64).sort().values
    assert torch.equal(smooth_rank(ranked, ranked), torch.arange(50, dtype=torch.float64))
    grid = torch.linspace(-4, 6, 2001, dtype=torch.float64)
    ranks = smooth_rank(ranked, grid)
    assert (ranks.diff() >= 0).all() and (ranks[grid > ranked[0]].diff() > 0).all()
    for bound in (0.0, 3.0, 17.25, 48.9, 49.0, 52.5):
        t = smooth_rank_threshold(ranked, bound)
        assert torch.equal(ranks > bound, grid > t), bound


def test_thresholds_json_says_how_the_validation_split_was_divided():
    g = torch.Generator().manual_seed(1)
    scores = correlated_scores(3, 1001, g)
    thresholds, record = Conformal(alpha=0.05, rank_fraction=0.4, seed=3).fit_union_record(scores)
    assert set(thresholds) == set(scores)
    assert record["rank_part"] == 400 and record["threshold_part"] == 601
    assert record["rank"] == conformal_rank(601, 0.05)
    assert "seed 3" in record["split"] and record["alpha"] == 0.05


def test_the_union_keeps_exactly_k_images_of_its_threshold_part():
    """The image that sets the bound is kept: the thresholds turned back from its rank must
    not round below its own score (on some draws they did)."""
    g = torch.Generator().manual_seed(2)
    for draw in range(200):
        scores = correlated_scores(3, 100, g)
        rule = Conformal(alpha=0.05, seed=draw)
        thresholds, record = rule.fit_union_record(scores)
        order = torch.randperm(100, generator=torch.Generator().manual_seed(draw))
        part = order[record["rank_part"] :]
        rejected = torch.zeros(len(part), dtype=torch.bool)
        for name, s in scores.items():
            rejected |= s[part] > torch.tensor(thresholds[name], dtype=torch.float32)
        assert (~rejected).sum().item() == record["rank"], draw


def union_decisions_by_numpy(val: dict, judged: dict, alpha: float, seed: int) -> np.ndarray:
    """The union rule from its definition, with numpy's interpolation for the ranks: True
    where an image of ``judged`` is rejected."""
    n = len(next(iter(val.values())))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()
    ranks_from, threshold_from = order[: round(0.5 * n)], order[round(0.5 * n) :]

    def largest_rank(scores: dict) -> np.ndarray:
        ranks = []
        for name, values in scores.items():
            ranked = np.sort(val[name][ranks_from].astype(np.float64))
            span = max(ranked[-1] - ranked[0], 1e-12)
            xp = np.append(ranked, ranked[-1] + 1e6 * span)  # linear beyond the largest
            fp = np.append(np.arange(len(ranked)), len(ranked) - 1 + 1e6)
            ranks.append(np.interp(values.astype(np.float64), xp, fp))
        return np.max(ranks, axis=0)

    calibration = np.sort(largest_rank({k: v[threshold_from] for k, v in val.items()}))
    bound = calibration[conformal_rank(len(threshold_from), alpha) - 1]
    return largest_rank(judged) > bound


@pytest.mark.slow
def test_conformal_calibration_end_to_end_and_moved_by_osr_calibrate(
    train_cfg, tmp_path, tiny_data
):
    _, objects = train(
        train_cfg(
            *TINY_TRAINING,
            "model=mlae",
            "calibration=conformal",
            "calibration.alpha=0.1",
            "data.val_size=200",
        )
    )
    module, datamodule = objects["model"], objects["datamodule"]
    run = tmp_path / "run"
    record = json.loads((run / "thresholds.json").read_text())
    assert record["rule"] == {
        "alpha": 0.1,
        "delta": None,
        "rank_fraction": 0.5,
        "seed": 0,
        "name": "conformal",
    }
    union = record["union_of_votes"]
    # the 200 held-out images: 100 calibrate (50 rank, 50 set the threshold), 100 select
    assert (union["rank_part"], union["threshold_part"], union["rank"]) == (50, 50, 46)
    assert "exchangeable" in union["guarantee"] and "not met" not in union["guarantee"]
    assert record["split"] == "mnist calibration" and record["calibration"]["count"] == 100
    for name in ("msp", "energy"):  # not voting: each alone at alpha over all 100 images
        assert "threshold_alone" not in record["scores"][name]

    batches = list(datamodule.iterate(datamodule.calibration_dataloader(), module.device))
    x = torch.cat([b[0] for b in batches]).cpu()
    module.eval()
    with torch.no_grad():
        logits, scores = module.logits_and_scores(x)
    voting = ["recon_l2", "binary_diff", "max_logit"]  # model=mlae's default voting set
    assert module.hparams.voting_scores == voting
    val = {name: scores[name].numpy() for name in voting}
    expected = union_decisions_by_numpy(val, val, 0.1, seed=0)
    decided = module.decide(logits, scores) == module.unknown_label
    assert np.array_equal(decided.numpy(), expected)
    saved = np.load(run / "scores.npz")
    test = {name: saved[f"mnist.scores.{name}"] for name in val}
    test_rejected = saved["mnist.predictions"] == module.unknown_label
    assert np.array_equal(test_rejected, union_decisions_by_numpy(val, test, 0.1, seed=0))
    # the conformal p-values: at most alpha exactly where the rule rejects
    assert np.array_equal(saved["mnist.p_value"] <= 0.1, test_rejected)

    curve = json.loads((run / "operating_curve.json").read_text())
    assert curve["voting_scores"] == voting
    assert [row["alpha"] for row in curve["rows"]] == [0.02, 0.05, 0.1]  # 50 images: >= 1/51
    metrics = json.loads((run / "metrics.json").read_text())
    at_alpha = curve["rows"][2]["rejected"]
    assert at_alpha["mnist"] == pytest.approx(metrics["known_rejection_rate"])
    assert at_alpha["fashion_mnist"] == pytest.approx(metrics["ood.fashion_mnist.rejection_rate"])
    assert "## Operating curve of the conformal rule" in (run / "report.md").read_text()
    assert (run / "plots" / "operating_curve.png").read_bytes()[:4] == b"\x89PNG"

    best = run / "checkpoints" / "best.ckpt"
    moved = run_calibrate(
        best, tmp_path / "cal", tiny_data, "calibration=conformal", "calibration.alpha=0.05"
    )
    assert moved["rule"]["alpha"] == 0.05 and moved["union_of_votes"]["rank"] == 49
    calibrated = read_checkpoint(tmp_path / "cal/checkpoints/calibrated.ckpt")
    assert calibrated["osr_config"]["calibration"]["alpha"] == 0.05
    thresholds = module_from_checkpoint(calibrated).threshold_dict()
    assert np.array_equal(
        (module.decide(logits, scores, thresholds) == module.unknown_label).numpy(),
        union_decisions_by_numpy(val, val, 0.05, seed=0),
    )


@pytest.mark.parametrize(
    ("model", "recommended", "notebook"),
    [
        ("mlae", ["recon_l2", "binary_diff", "max_logit"], ["recon_l2", "binary_diff"]),
        ("baseline", ["energy", "gen", "max_logit"], ["msp"]),
    ],
)
def test_defaults_vote_with_the_recommended_sets_and_seed_repro_with_the_notebooks(
    model, recommended, notebook
):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        default = compose("train", overrides=[f"model={model}"])
        repro = compose("train", overrides=["experiment=seed_repro", f"model={model}"])
    assert instantiate(default.calibration) == Conformal(alpha=0.01)
    assert list(default.model.voting_scores) == recommended
    assert set(recommended) <= set(default.detectors)
    assert instantiate(repro.calibration) == MeanStd(k=3.0)
    assert list(repro.model.voting_scores) == notebook


def test_osr_calibrate_keeps_the_checkpoints_rule_unless_told_otherwise():
    run_config = {"calibration": {"_target_": "osr.scoring.thresholds.Quantile", "q": 0.9}}
    named = OmegaConf.create({"ckpt_path": "run.ckpt", "calibration": {"_target_": "x", "k": 2}})
    unnamed = OmegaConf.create({"ckpt_path": "run.ckpt", "calibration": None})
    assert calibration_config(named, run_config) == {"_target_": "x", "k": 2}
    assert calibration_config(unnamed, run_config) == run_config["calibration"]
    with pytest.raises(OSRError, match=r"run.ckpt records no calibration rule: name one, e.g."):
        calibration_config(unnamed, {})


def test_the_pac_rank_is_the_smallest_meeting_the_beta_bound():
    from scipy.stats import beta

    for n, alpha, delta in [(1000, 0.01, 0.05), (2500, 0.01, 0.1), (400, 0.05, 0.01)]:
        k = conformal_rank(n, alpha, delta)
        assert beta.cdf(1 - alpha, k, n + 1 - k) <= delta
        assert beta.cdf(1 - alpha, k - 1, n + 2 - k) > delta
        assert k >= conformal_rank(n, alpha)
    # (1 - alpha)^n <= delta needs n >= log(delta) / log(1 - alpha): 299 at 1% and 5%
    assert conformal_rank(299, 0.01, 0.05) == 299
    with pytest.raises(OSRError, match="delta=0.05 needs at least 299 calibration images"):
        conformal_rank(298, 0.01, 0.05)
    with pytest.raises(OSRError, match=r"calibration.delta=1.5 must lie in \(0, 1\)"):
        Conformal(delta=1.5)


@pytest.mark.parametrize("m", [1, 3])
def test_with_delta_few_calibration_draws_reject_more_than_alpha(m, monkeypatch):
    """Over 800 calibration draws, the share of draws whose rejection rate (exact, from the
    scores' law) exceeds alpha is at most delta, and it is the Beta law's; with the rank one
    lower, that law puts it above delta."""
    from scipy.stats import beta, norm

    import osr.scoring.conformal as conformal

    alpha, delta, draws = 0.05, 0.1, 800
    n = 400 if m == 1 else 800  # 400 images set the union's threshold too
    g = torch.Generator().manual_seed(m)
    exceeded = {0: 0, -1: 0}
    for draw in range(draws):
        # m independent standard normal scores: the rejection rate of thresholds is exact
        cal = {f"s{d}": torch.randn(n, generator=g) for d in range(m)}
        for shift in exceeded:
            with monkeypatch.context() as patch:
                rank = conformal.conformal_rank
                patch.setattr(conformal, "conformal_rank", lambda *a, r=rank, s=shift: r(*a) + s)
                rule = Conformal(alpha=alpha, delta=delta, seed=draw)
                thresholds, record = rule.fit_union_record(cal)
            kept = np.prod([norm.cdf(t) for t in thresholds.values()])
            exceeded[shift] += bool(1 - kept > alpha)
    assert record["delta"] == delta and "probability at least 0.9" in record["guarantee"]
    part = record["threshold_part"]
    assert part == 400 and record["rank"] == conformal_rank(part, alpha, delta) - 1
    for shift, count in exceeded.items():
        k = conformal_rank(part, alpha, delta) + shift
        law = beta.cdf(1 - alpha, k, part + 1 - k)  # 0.099 for the rank, 0.150 one lower
        assert (law <= delta) == (shift == 0)
        assert count / draws == pytest.approx(law, abs=3 * math.sqrt(law * (1 - law) / draws))
    assert exceeded[0] / draws <= delta + 2 * math.sqrt(delta * (1 - delta) / draws)


def test_the_fewest_calibration_images_a_rule_needs_is_exact():
    from osr.scoring.calibration import calibration_images_needed

    for rule, voting in [
        (Conformal(alpha=0.01), 1),
        (Conformal(alpha=0.01), 3),
        (Conformal(alpha=0.01, delta=0.05), 3),
        (Conformal(alpha=0.1, rank_fraction=0.3), 2),
    ]:
        for cross_fitted in (False, True):
            needed = calibration_images_needed(rule, 10, voting, cross_fitted)
            assert calibration_images_needed(rule, needed, voting, cross_fitted) is None
            assert calibration_images_needed(rule, needed - 1, voting, cross_fitted) == needed
            # the thresholds fit on that many images (and on each half of them)
            scores = correlated_scores(voting, needed, torch.Generator().manual_seed(0))
            for part in (slice(None), slice(0, needed // 2))[: 1 + cross_fitted]:
                rule.fit_union_record({name: s[part] for name, s in scores.items()})
            if not cross_fitted:  # one image fewer: no threshold keeps the budget
                with pytest.raises(OSRError):
                    rule.fit_union_record({name: s[1:] for name, s in scores.items()})
    assert calibration_images_needed(MeanStd(), 2, 3) is None
