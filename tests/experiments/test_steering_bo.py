"""The steering_bo experiment's steps, as nbs/steering_bo.py calls them (groups_for, search_space, make_objective,
math_problems, math_eval / math_score, steering_for, history_path, bo_results, draw_figures), on a 4-layer tiny
Llama with the byte tokenizer. The objective at a point is checked against a direct computation with the tests' own
hooks (one weight per layer group, one unpadded row at a time); each test names the one-line mutation it catches."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import ByteTokenizer, hand_greedy, hand_reply_logprob, hand_steering, one_thread

from lib.experiments import steering_bo as bo
from lib.experiments.steering_bo import BOSteeringConfig
from lib.kits.data import DEFAULT_PROMPTS, load_subset
from lib.kits.mathdata import build_messages, train_eval_split
from lib.kits.rewards import is_correct
from lib.models import tiny_model
from lib.vectors import SteeringVector

TOKENIZER = ByteTokenizer(chat=True)
N_LAYERS = 4
NEW = 4


@pytest.fixture(scope="module")
def model():
    with one_thread():
        yield tiny_model("llama", n_layers=N_LAYERS, seed=31)


@pytest.fixture(scope="module")
def vector() -> SteeringVector:
    generator = torch.Generator().manual_seed(32)
    return SteeringVector({layer: torch.randn(64, generator=generator) * 0.4 for layer in range(N_LAYERS)})


def _cfg(**overrides) -> BOSteeringConfig:
    settings = {"n_groups": 2, "eval_size": 2, "train_size": 2, "confirm_size": 3, "max_completion_length": NEW,
                "batch_size": 4, "n_initial_points": 2, "n_iterations": 3}
    return BOSteeringConfig(**{**settings, **overrides})


def _chat(messages) -> list[int]:
    """The byte tokenizer's chat template written out here (not lib.generation.render_chat)."""
    if isinstance(messages, str):
        messages = [{"role": "user", "content": messages}]
    return TOKENIZER("".join(f"[{m['role']}]{m['content']}\n" for m in messages) + "[assistant]")["input_ids"]


def _by_group(vector: SteeringVector, weights: dict[str, float], groups: dict[str, list[int]]) -> dict:
    """The additions one point stands for: each group's weight times the vector at each of its layers."""
    return {layer: weights[name] * vector[layer] for name, layers in groups.items() for layer in layers}


@pytest.mark.parametrize("point", [{"early": 0.25, "late": 1.0}, {"early": 0.0, "late": 0.0}])
def test_contrastive_objective_at_a_point_is_the_hand_gap_with_one_weight_per_group(model, vector, point):
    """objective="contrastive_gap" at a point: the mean log-prob of the target set's last `eval_size` replies minus
    the baseline set's, each after a neutral prompt (cycled) and cut to 64 tokens, with the early group's weight on
    layers 0-1 and the late group's on layers 2-3; at 0 it is the unsteered gap. Catches: the group weights applied
    to the wrong groups, target and baseline swapped, the weight ignored (coefficient not 1 x weight)."""
    cfg = _cfg(objective="contrastive_gap")
    names, groups = bo.groups_for(cfg, model)
    assert (names, groups) == (["early", "late"], [[0, 1], [2, 3]])
    objective = bo.make_objective(cfg, model, TOKENIZER, vector, names, groups)

    def mean_logprob(key: str) -> float:
        examples = load_subset(key, cfg.seed)[-cfg.eval_size:]
        return sum(hand_reply_logprob(model, _chat(DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)]),
                                      TOKENIZER(e.response)["input_ids"][:64])
                   for i, e in enumerate(examples)) / len(examples)

    with hand_steering(model, _by_group(vector, point, {"early": [0, 1], "late": [2, 3]})):
        gap = mean_logprob(cfg.target) - mean_logprob(cfg.baseline)
    assert objective(point) == pytest.approx(gap, abs=1e-4)


def test_pass1_objective_scores_hand_generations_steered_by_group(model, vector, monkeypatch):
    """objective="pass1" at a point is pass@1 of the greedy completions of the eval problems with the grouped
    steering, and math_eval (the confirmation step) returns those same completions: each equals a hand greedy
    generation with the group weights added by own hooks. A random model solves none, so which problems the
    objective scores is read off the evaluation it asks for. Catches: the optimiser scored on the training problems,
    the steering dropped from math_eval, group weights swapped."""
    cfg = _cfg(objective="pass1")
    names, groups = bo.groups_for(cfg, model)
    point = {"early": 1.5, "late": 0.5}
    eval_problems, _ = bo.math_problems(cfg)
    evaluation = bo.math_eval(cfg, model, TOKENIZER, eval_problems, bo.steering_for(vector, groups, names, point))
    unsteered = bo.math_eval(cfg, model, TOKENIZER, eval_problems)
    hand, plain = [], []
    for problem in eval_problems:
        prompt = _chat(build_messages(problem.question, one_shot=True))
        with hand_steering(model, _by_group(vector, point, {"early": [0, 1], "late": [2, 3]})):
            hand.append(TOKENIZER.decode(hand_greedy(model, prompt, NEW, ByteTokenizer.eos_token_id)))
        plain.append(TOKENIZER.decode(hand_greedy(model, prompt, NEW, ByteTokenizer.eos_token_id)))
    assert [c[0] for c in evaluation.completions] == hand and [c[0] for c in unsteered.completions] == plain
    assert hand != plain  # the steering moves this model: the comparison has teeth
    expected = sum(is_correct(text, p.answer) for text, p in zip(hand, eval_problems, strict=True)) / len(hand)
    scored = []
    real = bo.evaluate_math
    monkeypatch.setattr(bo, "evaluate_math", lambda model, tokenizer, problems, **kwargs:
                        scored.append(list(problems)) or real(model, tokenizer, problems, **kwargs))
    assert bo.make_objective(cfg, model, TOKENIZER, vector, names, groups)(point) == evaluation.pass_at[1] == expected
    assert scored == [train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)[1]]


def test_confirmation_problems_are_new_to_the_optimiser_and_to_training():
    """The optimiser's problems are grpo_math's eval set (same source, sizes and seed); the confirmation set has
    `confirm_size` problems in neither it nor the training set (catches: confirmation drawn from the start of the
    stream, i.e. the training problems, which the winner's-curse check must not see)."""
    cfg = _cfg(confirm_size=5)
    eval_problems, confirm = bo.math_problems(cfg)
    train, held_out = train_eval_split(cfg.source, cfg.train_size, cfg.eval_size, cfg.seed)
    assert eval_problems == held_out and len(confirm) == 5
    assert not {p.question for p in confirm} & {p.question for p in train + held_out}


def test_layer_groups_names_and_a_vector_missing_a_layer(model, vector):
    """Catches: boundaries ignored, default names not following the group count, a vector without every layer
    accepted (it would steer fewer layers than the point says)."""
    assert bo.groups_for(_cfg(n_groups=4), model) == (["early", "mid_early", "mid_late", "late"], [[0], [1], [2], [3]])
    assert bo.groups_for(_cfg(boundaries=[1, 3]), model) == (["early", "middle", "late"], [[0], [1, 2], [3]])
    assert bo.groups_for(_cfg(group_names=["low", "high"]), model) == (["low", "high"], [[0, 1], [2, 3]])
    space = bo.search_space(_cfg(weight_low=-1.0, weight_high=2.0), ["early", "late"])
    assert (space.names, space.bounds) == (["early", "late"], [(-1.0, 2.0), (-1.0, 2.0)])
    with pytest.raises(ValueError, match=r"lacks layers \[3\]"):
        bo.steering_for(SteeringVector({layer: vector[layer] for layer in range(3)}), [[0, 1], [2, 3]],
                        ["early", "late"], {"early": 1.0, "late": 1.0})


def test_resume_from_seeds_the_run_folder_once(tmp_path):
    """A killed run's bo_history.json is copied into the run folder once; afterwards the folder's own history wins
    (catches: the copy made on every call, which would throw away evaluations made since), and random search never
    takes it."""
    killed = tmp_path / "elsewhere" / "bo_history.json"
    killed.parent.mkdir()
    killed.write_text('{"history": ["killed"]}')
    cfg, out = _cfg(resume_from=str(killed)), tmp_path / "run"
    path = bo.history_path(cfg, out, "bo")
    assert path == out / "bo_history.json" and path.read_text() == '{"history": ["killed"]}'
    path.write_text('{"history": ["killed", "since"]}')
    assert bo.history_path(cfg, out, "bo").read_text() == '{"history": ["killed", "since"]}'
    assert not bo.history_path(cfg, out, "random").exists()


def test_bo_results_and_figures_from_results_json_alone(tmp_path):
    """The notebook's last steps on a real 3-evaluation BO search of a known function: results.json holds the best
    point of the history and the summary a sweep reads, and every figure is drawn from the JSON alone (catches:
    best taken from the last evaluation, a figure needing the live search object)."""
    from lib.kits.optimize import run_search

    cfg = _cfg(n_initial_points=2, n_iterations=3)
    space = bo.search_space(cfg, ["early", "late"])
    score = lambda p: 1.0 - (p["early"] - 0.25) ** 2 - (p["late"] - 0.75) ** 2  # noqa: E731
    search = run_search(score, space, method="bo", history_path=tmp_path / "bo_history.json", n_iterations=3,
                        n_initial_points=2, seed=0, progress=False)
    rs = run_search(score, space, method="random", history_path=tmp_path / "random_history.json", n_iterations=3,
                    n_initial_points=2, seed=0, progress=False)
    results = json.loads(json.dumps(bo.bo_results(cfg, ["early", "late"], [[0, 1], [2, 3]], search, rs, 0.5, None,
                                                  {"score": 0.75, "kl": 0.01})))
    best = max(search.history, key=lambda r: r["score"])
    assert results["best_weights"] == best["point"] and results["best_score"] == score(best["point"])
    assert results["summary"] == {
        "main_metric": "pass1 (BO best)", "main": best["score"], "baseline": 0.5, "confirmed": 0.75, "finetuned": None,
        "random_best": max(r["score"] for r in rs.history), "side_effect_metric":
        "KL from base on neutral text at the best weights", "side_effect": 0.01}
    assert results["groups"] == {"early": [0, 1], "late": [2, 3]}
    figures = bo.draw_figures(results, tmp_path)
    assert {"gp_2d", "parallel", "bo_vs_random"} <= set(figures)
    assert all(path.exists() and path.stat().st_size > 0 for path in figures.values())
    import matplotlib.pyplot as plt

    plt.close("all")


@pytest.mark.parametrize(("change", "message"), [
    ({"weight_low": 1.0, "weight_high": 1.0}, r"^weight_low=1.0 must be below weight_high=1.0"),
    ({"n_initial_points": 4, "n_iterations": 3}, r"^n_initial_points=4 must be <= n_iterations=3"),
    ({"boundaries": [2, 2]}, r"^boundaries=\[2, 2\] must be strictly increasing"),
    ({"boundaries": [0]}, r"^boundaries=\[0\]"), ({"group_names": ["a", "b", "c"]}, r"^group_names=.*3 names for 2"),
    ({"n_parallel": 0}, r"^n_parallel=0"), ({"executor": "slurm"}, r"^executor='slurm'"),
    ({"objective": "loss"}, r"^objective='loss'"), ({"num_completions_eval": 2}, r"^num_completions_eval=2 needs"),
])
def test_config_refuses_bad_values_naming_the_parameter(change, message):
    """Catches: any one check of BOSteeringConfig.__post_init__ removed."""
    with pytest.raises(ValueError, match=message):
        _cfg(**change)


def test_check_inputs_names_the_missing_vector_and_the_run_that_makes_it(tmp_path):
    """Catches: a missing vector accepted before launch (the run would fail after loading the model)."""
    with pytest.raises(ValueError, match=r"^vector='.*nowhere'.*\./just run math_steering"):
        _cfg(vector=str(tmp_path / "nowhere"), objective="contrastive_gap").check_inputs()
