"""The reasoning-direction experiment's parts on tiny models: directions against hand computations,
norm-matched controls, resumable per-alpha evaluation, the tables."""

from __future__ import annotations

import pytest
import torch
from conftest import ByteTokenizer

from lib.experiments import reasoning_direction as rd
from lib.experiments.reasoning_direction import ReasoningDirectionConfig
from lib.kits.mathdata import MathProblem
from lib.kits.stats import balanced_split
from lib.latent import latent_generate
from lib.models import tiny_model

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


def test_random_controls_match_norms_per_layer_and_step_and_differ_by_seed():
    direction = rd.SteeringVector({0: torch.randn(3, 64) * torch.tensor([[1.0], [5.0], [20.0]]), 1: torch.randn(3, 64)})
    controls = rd.controls(_cfg(mode="latent", latent_steps=3, n_random=3), direction)
    assert list(controls) == ["direction", "random_0", "random_1", "random_2"]
    for label in ("random_0", "random_1", "random_2"):
        for layer in (0, 1):
            torch.testing.assert_close(controls[label][layer].norm(dim=-1), direction[layer].norm(dim=-1))
    assert not torch.allclose(controls["random_0"][0], controls["random_1"][0])
    flat = rd.SteeringVector({4: torch.randn(64) * 7})
    random = rd.controls(_cfg(n_random=1), flat)["random_0"]
    assert random[4].norm() == pytest.approx(float(flat[4].norm()), rel=1e-6)
    assert abs(float(torch.nn.functional.cosine_similarity(random[4], flat[4], dim=0))) < 0.5


@pytest.mark.parametrize("mode", ["token", "latent"])
def test_evaluation_saves_each_alpha_and_resumes_without_recomputing(tmp_path, monkeypatch, mode):
    model = tiny_model("llama", n_layers=2, seed=13)
    cfg = _cfg(mode=mode)
    vector = rd.SteeringVector({1: torch.randn(2, 64) if mode == "latent" else torch.randn(64)})
    test = PROBLEMS[:4]
    evaluations = rd.evaluate(cfg, model, TOKENIZER, test, rd.controls(cfg, vector), tmp_path)
    files = sorted(p.relative_to(tmp_path / "evals").as_posix() for p in (tmp_path / "evals").rglob("*.json"))
    assert files == ["direction/alpha=+0.json", "direction/alpha=+2.json", "direction/alpha=-2.json",
                     "random_0/alpha=-2.json", "random_1/alpha=-2.json"]
    unsteered, _ = rd.solve(cfg, model, TOKENIZER, test, progress=False)
    assert evaluations["direction"][0.0] == unsteered  # alpha 0 is the unsteered model exactly

    def refuse(*args, **kwargs):
        raise AssertionError("a finished evaluation was recomputed")

    monkeypatch.setattr(rd, "solve", refuse)
    assert rd.evaluate(cfg, model, TOKENIZER, test, rd.controls(cfg, vector), tmp_path) == evaluations


def _evaluations(direction: dict[float, list[int]], randoms: dict[str, dict[float, list[int]]]) -> dict:
    as_rows = {a: [{"correct": bool(c), "answered": True} for c in flags] for a, flags in direction.items()}
    return {"direction": as_rows, **{label: {a: [{"correct": bool(c), "answered": True} for c in flags]
                                             for a, flags in runs.items()} for label, runs in randoms.items()}}


def test_tables_by_hand():
    base = [1, 1, 1, 1, 0, 0, 0, 0, 1, 0]
    minus = [0, 0, 0, 0, 0, 0, 0, 0, 1, 0]  # 4 lost, 0 gained
    plus = [1, 1, 1, 1, 1, 0, 0, 0, 1, 0]  # 1 gained
    evaluations = _evaluations({-3.0: minus, 0.0: base, 3.0: plus},
                               {"random_0": {-3.0: [1, 1, 1, 0, 0, 0, 0, 0, 1, 0]},
                                "random_1": {-3.0: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0]}})
    table = rd.alpha_table(_cfg(alphas=[-3.0, 0.0, 3.0], random_alphas=[-3.0]), evaluations).set_index("alpha")
    assert table.loc[-3.0, "accuracy"] == pytest.approx(0.1) and table.loc[-3.0, "delta_points"] == pytest.approx(-40)
    assert table.loc[-3.0, "p_mcnemar"] == pytest.approx(2 / 16) and not table.loc[-3.0, "significant"]
    assert (table.loc[3.0, "gained"], table.loc[3.0, "lost"]) == (1, 0)
    moves = rd.transition_table(evaluations).set_index("alpha")
    assert moves.loc[-3.0].tolist() == [1, 0, 4, 5] and moves.sum(axis=1).eq(10).all()
    randoms = rd.random_table(evaluations)
    mine = randoms[randoms.direction == "direction"].iloc[0]
    # direction -40 points; randoms -10 and -50: one does at least as much damage -> p = 2/3
    assert mine.randoms_as_extreme == 1 and mine.p_rank == pytest.approx(2 / 3)
    assert randoms[randoms.direction == "random mean"].delta_points.iloc[0] == pytest.approx(-30)


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
