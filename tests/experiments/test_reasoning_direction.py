"""The reasoning-direction experiment's parts on tiny models: directions against hand computations, KL-matched
controls re-measured by the tests' own route (conftest's plain hooks; an uncached latent loop), resumable
per-alpha evaluation, the tables with their intervals and rank floors. Each test names the one-line mutation it
catches."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import ByteTokenizer, hand_kl, one_thread

from lib.experiments import reasoning_direction as rd
from lib.experiments.reasoning_direction import ReasoningDirectionConfig
from lib.kits.data import NEUTRAL_TEXTS
from lib.kits.mathdata import MathProblem
from lib.kits.stats import balanced_split
from lib.latent import latent_generate
from lib.models import tiny_model
from lib.vectors import random_like

TOKENIZER = ByteTokenizer(chat=True)
PROBLEMS = [MathProblem(f"Calculate {a} + {b}.", str(a + b), "test") for a, b in
            [(1, 2), (3, 4), (5, 6), (7, 8), (2, 9), (4, 4), (6, 1), (8, 3), (9, 9), (1, 7)]]
SOLVED = [True, False, True, False, False, True, False, True, False, True]


def _rows(completions=None):
    completions = completions or [f"<think>x</think><answer>{i}</answer>" for i in range(len(PROBLEMS))]
    return [{"correct": c, "answered": True, "completion": text} for c, text in zip(SOLVED, completions, strict=True)]


def _cfg(**overrides) -> ReasoningDirectionConfig:
    settings = {"n_problems": len(PROBLEMS), "layers": [1], "alphas": [-2.0, 0.0, 2.0], "n_random": 2,
                "random_alphas": [-2.0], "max_new_tokens": 4, "batch_size": 3, "latent_steps": 2}
    return ReasoningDirectionConfig(**{**settings, **overrides})


def _hand_hidden(model, text: str, layer: int) -> torch.Tensor:
    """One unpadded row through the model; block `layer`'s output from output_hidden_states."""
    ids = torch.tensor([TOKENIZER(text)["input_ids"]])
    with torch.no_grad():
        return model(ids, output_hidden_states=True).hidden_states[layer + 1][0]


def _hand_direction(parts, per_problem):
    solved = torch.stack([per_problem[i] for i in parts["train_correct"]]).mean(0)
    failed = torch.stack([per_problem[i] for i in parts["train_wrong"]]).mean(0)
    return solved - failed


@pytest.mark.parametrize("read", ["prompt_last", "completion_mean"])
def test_token_direction_equals_hand_computation(tmp_path, isolated_cache, read):
    model = tiny_model("llama", n_layers=3, seed=11)
    cfg = _cfg(read=read)
    rows = _rows([f"<answer>{'7' * (i + 1)}</answer>" for i in range(len(PROBLEMS))])
    parts = balanced_split(SOLVED, cfg.train_fraction, cfg.seed)
    vector = rd.direction(cfg, model, TOKENIZER, PROBLEMS, rows, parts, tmp_path)
    for layer in (0, 1):  # the last block's hidden_states entry is after the final norm
        per_problem = {}
        for i, problem in enumerate(PROBLEMS):
            prompt = TOKENIZER.apply_chat_template(rd.build_messages(problem.question))
            hidden = _hand_hidden(model, prompt + (rows[i]["completion"] if read == "completion_mean" else ""), layer)
            start = len(TOKENIZER(prompt)["input_ids"])
            per_problem[i] = hidden[-1] if read == "prompt_last" else hidden[start:].mean(0)
        torch.testing.assert_close(vector[layer], _hand_direction(parts, per_problem), atol=1e-5, rtol=1e-4)
    assert rd.direction(cfg, None, None, PROBLEMS, rows, parts, tmp_path).vectors[1].equal(vector[1])  # resumed


def test_latent_direction_equals_per_problem_latent_loops(tmp_path):
    model = tiny_model("qwen2", n_layers=2, seed=12)
    cfg = _cfg(mode="latent", latent_steps=3)
    parts = balanced_split(SOLVED, cfg.train_fraction, cfg.seed)
    vector = rd.direction(cfg, model, TOKENIZER, PROBLEMS, _rows(), parts, tmp_path)
    assert vector[1].shape == (3, 64)
    per_problem = {i: latent_generate(model, TOKENIZER, [rd.build_messages(p.question)], latent_steps=3,
                                      start_text=rd.START_TEXT, end_text=rd.END_TEXT, max_new_tokens=2,
                                      record_layers=[1], progress=False).latents[1][0]
                   for i, p in enumerate(PROBLEMS)}
    torch.testing.assert_close(vector[1], _hand_direction(parts, per_problem), atol=1e-5, rtol=1e-4)


def _cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a.flatten(), b.flatten(), dim=0))


def test_token_controls_are_kl_matched_by_an_independent_route():
    """The direction's side effect is the raw KL on neutral text (re-measured by conftest's hand_kl), and each
    random control, steered at its alpha, has that KL within 5% by the same hand route. Catches: controls() going
    back to norm-matched `random_like` (scale 1, KL off by far more than 5%); matching at coefficient 1 instead of
    alpha (`weight=alpha` dropped); matching the KL of the other alpha; seeds `cfg.seed + i` instead of
    `cfg.seed + 1 + i`; the side effect read in another rendering (chat_reply)."""
    model = tiny_model("llama", n_layers=2, seed=13)
    cfg = _cfg(layers=[1], random_alphas=[-2.0, 2.0], seed=3)
    generator = torch.Generator().manual_seed(0)
    vector = rd.SteeringVector({0: torch.randn(64, generator=generator), 1: torch.randn(64, generator=generator)})
    rows = [TOKENIZER(text)["input_ids"] for text in NEUTRAL_TEXTS]
    with one_thread():
        kl = rd.side_effect_kl(cfg, model, TOKENIZER, vector)
        hand = {alpha: hand_kl(model, rows, {1: alpha * vector[1]}) for alpha in cfg.coefficients}
        assert kl[0.0] == 0.0 and [kl[a] for a in (-2.0, 2.0)] == pytest.approx([hand[-2.0], hand[2.0]], rel=1e-3)
        controls = rd.controls(cfg, model, TOKENIZER, vector, kl)
        assert [(m["direction"], m["alpha"], m["seed"]) for m in controls.matches] == [
            ("random_0", -2.0, 4), ("random_0", 2.0, 4), ("random_1", -2.0, 5), ("random_1", 2.0, 5)]
        for match in controls.matches:
            assert "note" not in match, match
            label, alpha = match["direction"], match["alpha"]
            control = controls.vectors[label][alpha]
            assert hand_kl(model, rows, {1: alpha * control[1]}) == pytest.approx(hand[alpha], rel=0.05)
            assert match["target_kl"] == kl[alpha] and match["kl"] == pytest.approx(kl[alpha], rel=0.05)
            # the seed's random direction (one per seed at every alpha), rescaled: not the norm-matched one
            assert _cosine(control[1], random_like(vector, seed=match["seed"])[1]) == pytest.approx(1.0, abs=1e-5)
            assert float(control[1].norm() / vector[1].norm()) == pytest.approx(match["scale_over_norm_matched"])
            assert abs(match["scale_over_norm_matched"] - 1.0) > 0.05
    assert set(controls.vectors["direction"]) == {-2.0, 0.0, 2.0}
    assert all(v is vector for v in controls.vectors["direction"].values())


def _hand_latent_answer(model, text: str, additions: dict[int, torch.Tensor], k: int) -> torch.Tensor:
    """[vocab] log-probs of the first answer token after k continuous thoughts, one unpadded row with no KV cache:
    the whole sequence of embeddings goes through the model at each step, and `additions[layer][j]` is added by a
    plain forward hook to that block's output at latent position j (every forward, as the cached loop keeps it)."""
    embed = model.get_input_embeddings()
    ids = TOKENIZER(TOKENIZER.apply_chat_template([{"role": "user", "content": text}]) + rd.START_TEXT)["input_ids"]
    start = len(ids)

    def adder(steps: torch.Tensor):
        def hook(module, args, output):
            hidden = (output[0] if isinstance(output, tuple) else output).clone()
            for j in range(min(k, hidden.shape[1] - start)):
                hidden[0, start + j] += steps[j]
            return (hidden, *output[1:]) if isinstance(output, tuple) else hidden
        return hook

    handles = [model.model.layers[layer].register_forward_hook(adder(steps)) for layer, steps in additions.items()]
    try:
        with torch.no_grad():
            seq = embed(torch.tensor([ids]))
            for _ in range(k):
                thought = model(inputs_embeds=seq, output_hidden_states=True).hidden_states[-1][:, -1:]
                seq = torch.cat([seq, thought], dim=1)
            seq = torch.cat([seq, embed(torch.tensor([TOKENIZER(rd.END_TEXT)["input_ids"]]))], dim=1)
            logits = model(inputs_embeds=seq).logits[0, -1]
    finally:
        for handle in handles:
            handle.remove()
    return torch.log_softmax(logits.float(), dim=-1)


def _hand_latent_kl(model, additions: dict[int, torch.Tensor], k: int) -> float:
    total = 0.0
    for text in NEUTRAL_TEXTS:
        reference = _hand_latent_answer(model, text, {}, k)
        steered = _hand_latent_answer(model, text, additions, k)
        total += float((reference.exp() * (reference - steered)).sum())
    return total / len(NEUTRAL_TEXTS)


def test_latent_controls_are_kl_matched_through_the_latent_loop():
    """Latent mode: the KL is the first answer token's after the steered thoughts (raw text never sees latent
    steering), with `step_alphas`; re-measured by an uncached hand loop, and each control (per-step norms of the
    direction, one scale for all) within 5% of the direction's. Catches: latent_kl dropping `step_alphas` or
    steering every position; latent controls left norm-matched; controls matched on the raw text KL (0)."""
    model = tiny_model("llama", n_layers=2, seed=13)
    with torch.no_grad():
        model.lm_head.weight.mul_(30.0)  # a confident model: KLs far above float noise
    cfg = _cfg(mode="latent", layers=[0], latent_steps=2, step_alphas=[1.0, 0.5], n_random=2, random_alphas=[-2.0])
    generator = torch.Generator().manual_seed(0)  # not a control's seed: random_like(seed=1) would be this draw
    vector = rd.SteeringVector({0: torch.randn(2, 64, generator=generator) * torch.tensor([[1.0], [3.0]]),
                                1: torch.randn(2, 64, generator=generator)})
    weights = torch.tensor([[1.0], [0.5]])

    def additions(v, alpha):
        return {0: alpha * weights * v[0]}

    with one_thread():
        kl = rd.side_effect_kl(cfg, model, TOKENIZER, vector)
        hand = _hand_latent_kl(model, additions(vector, -2.0), 2)
        assert kl[0.0] == 0.0 and kl[-2.0] == pytest.approx(hand, rel=1e-3) and hand > 1e-5
        controls = rd.controls(cfg, model, TOKENIZER, vector, kl)
        for match in controls.matches:
            assert "note" not in match, match
            control = controls.vectors[match["direction"]][-2.0]
            assert _hand_latent_kl(model, additions(control, -2.0), 2) == pytest.approx(hand, rel=0.05)
            ratio = control[0].norm(dim=-1) / vector[0].norm(dim=-1)  # per-step norms kept, one scale for all
            torch.testing.assert_close(ratio, torch.full((2,), match["scale_over_norm_matched"]), rtol=1e-5, atol=0)
            assert abs(match["scale_over_norm_matched"] - 1.0) > 0.05


def test_an_unreachable_kl_is_recorded_in_the_table_never_dropped():
    """A target no random direction reaches (a tiny model's random-direction KL saturates) leaves that control
    out with its reason in `matches`, a warning, and the random table (no rank at that alpha); the other alpha is
    still matched. Catches: KLUnreachable not caught (the run crashes); the record dropped (`continue`) so the
    table shows nothing; a rank computed over no controls."""
    model = tiny_model("llama", n_layers=2, seed=13)
    cfg = _cfg(layers=[1], random_alphas=[-2.0, 2.0], n_random=1)
    vector = rd.SteeringVector({1: torch.randn(64, generator=torch.Generator().manual_seed(0))})
    with one_thread():
        kl = rd.side_effect_kl(cfg, model, TOKENIZER, vector)
        with pytest.warns(UserWarning, match="no KL-matched random control"):
            controls = rd.controls(cfg, model, TOKENIZER, vector, {**kl, -2.0: 50.0})
    assert list(controls.vectors["random_0"]) == [2.0]
    unmatched, matched = controls.matches
    assert unmatched["alpha"] == -2.0 and "no scale reached KL 50" in unmatched["note"] and "kl" not in unmatched
    assert matched["alpha"] == 2.0 and "note" not in matched
    flags = [1, 1, 0, 0, 1, 0, 1, 0, 0, 1]
    evaluations = _evaluations({-2.0: flags, 0.0: flags, 2.0: flags}, {"random_0": {2.0: flags}})
    table = rd.random_table(evaluations, controls.matches).set_index(["alpha", "direction"])
    assert table.loc[(-2.0, "random_0"), "note"].startswith("no KL-matched random control")
    assert np.isnan(table.loc[(-2.0, "random_0"), "delta_points"])
    assert table.loc[(-2.0, "direction"), "n_random"] == 0 and np.isnan(table.loc[(-2.0, "direction"), "p_rank"])
    assert table.loc[(2.0, "direction"), "n_random"] == 1 and table.loc[(2.0, "direction"), "p_floor"] == 0.5


@pytest.mark.parametrize("mode", ["token", "latent"])
def test_evaluation_saves_each_alpha_and_resumes_without_recomputing(tmp_path, monkeypatch, mode):
    model = tiny_model("llama", n_layers=2, seed=13)
    cfg = _cfg(mode=mode)
    vector = rd.SteeringVector({1: torch.randn(2, 64) if mode == "latent" else torch.randn(64)})
    test = PROBLEMS[:4]
    vectors = {"direction": dict.fromkeys(cfg.coefficients, vector),
               **{f"random_{i}": {-2.0: random_like(vector, seed=i + 1)} for i in range(2)}}
    evaluations = rd.evaluate(cfg, model, TOKENIZER, test, vectors, tmp_path)
    files = sorted(p.relative_to(tmp_path / "evals").as_posix() for p in (tmp_path / "evals").rglob("*.json"))
    assert files == ["direction/alpha=+0.json", "direction/alpha=+2.json", "direction/alpha=-2.json",
                     "random_0/alpha=-2.json", "random_1/alpha=-2.json"]
    unsteered, _ = rd.solve(cfg, model, TOKENIZER, test, progress=False)
    assert evaluations["direction"][0.0] == unsteered  # alpha 0 is the unsteered model exactly

    def refuse(*args, **kwargs):
        raise AssertionError("a finished evaluation was recomputed")

    monkeypatch.setattr(rd, "solve", refuse)
    assert rd.evaluate(cfg, model, TOKENIZER, test, vectors, tmp_path) == evaluations


def _evaluations(direction: dict[float, list[int]], randoms: dict[str, dict[float, list[int]]]) -> dict:
    as_rows = {a: [{"correct": bool(c), "answered": True} for c in flags] for a, flags in direction.items()}
    return {"direction": as_rows, **{label: {a: [{"correct": bool(c), "answered": True} for c in flags]
                                             for a, flags in runs.items()} for label, runs in randoms.items()}}


def _hand_paired_bootstrap(after: list[int], before: list[int], n_boot: int, seed: int) -> list[float]:
    """Percentile interval of 100 * mean(after - before), resampling the same problems in both runs."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(after, dtype=float), np.asarray(before, dtype=float)
    draws = [100 * np.mean(a[i] - b[i]) for i in (rng.integers(0, len(a), len(a)) for _ in range(n_boot))]
    return np.quantile(draws, [0.025, 0.975]).tolist()


def test_tables_by_hand():
    """Accuracy changes with their paired interval, McNemar, transitions, the rank among random directions with
    its floor, and the summary's decision with its number of comparisons. Catches: an unpaired bootstrap (steered
    and base resampled apart); the rank counted in the wrong sense for a gain or a loss; the floor 1/n instead of
    1/(n + 1); `comparisons` counting alpha 0."""
    base = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    minus = [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]  # 4 lost, 0 gained
    plus = [1, 1, 1, 1, 1, 0, 0, 0, 1, 0]  # 1 gained
    randoms_at = {"random_0": {-3.0: [1, 1, 1, 0, 0, 0, 0, 0, 1, 0], 3.0: [1, 1, 1, 1, 1, 1, 0, 0, 1, 0]},  # -10, +20
                  "random_1": {-3.0: [1, 1, 1, 0, 0, 0, 0, 0, 0, 0], 3.0: [1, 1, 1, 1, 1, 1, 1, 0, 1, 0]}}  # -20, +30
    evaluations = _evaluations({-3.0: minus, 0.0: base, 3.0: plus}, randoms_at)
    cfg = _cfg(alphas=[-3.0, 0.0, 3.0], random_alphas=[-3.0, 3.0], n_boot=500)
    table = rd.alpha_table(cfg, evaluations).set_index("alpha")
    assert table.loc[-3.0, "accuracy"] == pytest.approx(0.1) and table.loc[-3.0, "delta_points"] == pytest.approx(-40)
    assert table.loc[-3.0, "p_mcnemar"] == pytest.approx(2 / 16) and not table.loc[-3.0, "significant"]
    assert (table.loc[3.0, "gained"], table.loc[3.0, "lost"]) == (1, 0)
    for alpha, flags in ((-3.0, minus), (3.0, plus)):
        interval = [table.loc[alpha, "delta_low"], table.loc[alpha, "delta_high"]]
        assert interval[0] <= table.loc[alpha, "delta_points"] <= interval[1]
        assert interval == pytest.approx(_hand_paired_bootstrap(flags, base, 500, cfg.seed), abs=1e-9)
    assert (table.loc[0.0, "delta_low"], table.loc[0.0, "delta_high"]) == (0.0, 0.0)
    moves = rd.transition_table(evaluations).set_index("alpha")
    assert moves.loc[-3.0].tolist() == [1, 0, 4, 5] and moves.sum(axis=1).eq(10).all()
    randoms = rd.random_table(evaluations)
    mine = randoms[randoms.direction == "direction"].set_index("alpha")
    # alpha -3: the direction -40 points; randoms -10 and -20: none loses as much -> p = 1/3, the floor
    assert mine.loc[-3.0, "randoms_as_extreme"] == 0 and mine.loc[-3.0, "p_rank"] == pytest.approx(1 / 3)
    # alpha +3: the direction +10; randoms +20 and +30 both gain at least as much -> p = 3/3
    assert mine.loc[3.0, "randoms_as_extreme"] == 2 and mine.loc[3.0, "p_rank"] == pytest.approx(1.0)
    assert mine.p_floor.tolist() == pytest.approx([1 / 3, 1 / 3]) and mine.n_random.tolist() == [2, 2]
    assert randoms[(randoms.direction == "random mean") & (randoms.alpha == -3.0)].delta_points.iloc[0] == \
        pytest.approx(-15)
    probe = pd.Series({1: 0.5})
    parts = {"train_correct": [0], "train_wrong": [1], "test_correct": [2], "test_wrong": [3]}
    summary = rd.results(cfg, rd.SteeringVector({1: torch.ones(64)}), parts, table.reset_index(), moves.reset_index(),
                         randoms, probe)["summary"]
    assert summary["significant_alphas"] == [] and summary["comparisons"] == 2
    assert summary["significance_rule"].startswith("ours")
    assert (summary["suppression_alpha"], summary["suppression_p_vs_random"]) == (-3.0, pytest.approx(1 / 3))
    assert (summary["suppression_p_floor"], summary["suppression_n_random"]) == (pytest.approx(1 / 3), 2)
    assert summary["best_delta_points"] == pytest.approx(10.0)
    assert summary["best_delta_low"] <= summary["best_delta_points"] <= summary["best_delta_high"]
    assert summary["suppression_delta_low"] <= summary["suppression_delta_points"] == -40 <= \
        summary["suppression_delta_high"]


def test_config_errors_name_the_parameter():
    with pytest.raises(ValueError, match="random_alphas"):
        _cfg(random_alphas=[5.0])
    with pytest.raises(ValueError, match="alphas=.*0.0"):
        _cfg(alphas=[1.0, 2.0], random_alphas=[])
    with pytest.raises(ValueError, match="step_alphas"):
        _cfg(step_alphas=[1.0, 1.0])
    with pytest.raises(ValueError, match="mode="):
        _cfg(mode="soft")
    with pytest.raises(ValueError, match="projection"):
        _cfg(projection="p.pt")


def test_heldout_auc_per_layer_flips_with_the_sign():
    model = tiny_model("llama", n_layers=2, seed=14)
    cfg = _cfg(layers=[0])
    parts = balanced_split(SOLVED, cfg.train_fraction, cfg.seed)
    vector = rd.SteeringVector({0: torch.randn(64), 1: torch.randn(64)})
    probe = rd.heldout_auc(cfg, model, TOKENIZER, PROBLEMS, _rows(), parts, vector)
    flipped = rd.heldout_auc(cfg, model, TOKENIZER, PROBLEMS, _rows(), parts, -vector)
    assert list(probe.index) == [0, 1] and probe.between(0, 1).all()
    assert (probe + flipped).tolist() == pytest.approx([1.0, 1.0])
