"""Math sources, fixed train/eval splits and the prompt format."""

from __future__ import annotations

import sys
import types

import pytest

from lib.kits.mathdata import (
    HUB_SOURCES,
    MATH_SOURCES,
    OFFLINE_SOURCES,
    ONE_SHOT,
    PROCEDURAL_LIMITS,
    SYSTEM_PROMPT,
    MathProblem,
    build_messages,
    champ_answer,
    extract_boxed,
    load_math,
    train_eval_split,
)
from lib.kits.rewards import answers_match, parses


@pytest.mark.parametrize("source", OFFLINE_SOURCES)
def test_offline_sources_load_gradable_problems(source):
    problems = load_math(source, 40, seed=0)
    assert len(problems) == 40 and all(isinstance(p, MathProblem) for p in problems)
    assert all(p.source == source and p.question.strip() for p in problems)
    assert len({p.question for p in problems}) == 40
    for problem in problems:
        assert parses(problem.answer), problem
        assert answers_match(problem.answer, problem.answer), problem
    assert load_math(source, 40, seed=0) == problems
    assert load_math(source, 40, seed=1) != problems


def test_fixed_sources_hold_what_is_documented():
    assert len(load_math("gsm8k_offline", 100, seed=0)) == 100
    with pytest.raises(ValueError, match="n=101 exceeds the 100"):
        load_math("gsm8k_offline", 101, seed=0)
    assert len(load_math("champ", 156, seed=0)) == 156
    with pytest.raises(ValueError, match="n=157"):
        load_math("champ", 157, seed=0)


def test_arithmetic_is_the_documented_setting():
    problems = load_math("arithmetic", 50, seed=0)
    assert all(p.question.startswith("Calculate ") for p in problems)
    assert all(answers_match(p.answer, str(int(p.answer))) for p in problems)  # integer answers
    assert "gsm8k" in MATH_SOURCES and set(OFFLINE_SOURCES) | set(HUB_SOURCES) == set(MATH_SOURCES)


@pytest.mark.parametrize("source", ["arithmetic", "gsm8k_offline", "champ"])
def test_split_is_disjoint_deterministic_and_eval_is_fixed(source):
    train, held_out = train_eval_split(source, 40, 24, seed=3)
    assert len(train) == 40 and len(held_out) == 24
    assert not {p.question for p in train} & {p.question for p in held_out}
    assert train_eval_split(source, 40, 24, seed=3) == (train, held_out)
    other_train, same_eval = train_eval_split(source, 10, 24, seed=3)
    assert same_eval == held_out and other_train == train[:10]
    assert train_eval_split(source, 0, 24, seed=3)[1] == held_out
    assert train_eval_split(source, 40, 24, seed=4)[1] != held_out


def test_arithmetic_dedupes_bracketed_copies():
    """reasoning-gym writes "( -3 + 4 )" as well as "-3 + 4": both are one problem and never on both sides."""
    train, held_out = train_eval_split("arithmetic", 600, 64, seed=0)

    def key(problem):
        return problem.question.replace("(", "").replace(")", "").replace(" ", ""), problem.answer

    assert not {key(p) for p in train} & {key(p) for p in held_out}
    assert len({key(p) for p in train}) == len(train)


def test_split_size_errors_name_the_parameter():
    with pytest.raises(ValueError, match="train_size=90 \\+ eval_size=20 exceeds the 100"):
        train_eval_split("gsm8k_offline", 90, 20, seed=0)
    limit = PROCEDURAL_LIMITS["arithmetic"]
    with pytest.raises(ValueError, match=f"train_size={limit} \\+ eval_size=64 exceeds the {limit}"):
        train_eval_split("arithmetic", limit, 64, seed=0)
    with pytest.raises(ValueError, match="train_size=-1"):
        train_eval_split("arithmetic", -1, 64, seed=0)
    with pytest.raises(ValueError, match="eval_size=2.5"):
        train_eval_split("arithmetic", 10, 2.5, seed=0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n=0"):
        load_math("arithmetic", 0, seed=0)


def test_unknown_source_lists_the_valid_ones():
    with pytest.raises(ValueError, match="'maths'.*'arithmetic'.*'gsm8k_offline'.*'champ'.*'gsm8k'.*'math'"):
        load_math("maths", 5, seed=0)
    with pytest.raises(ValueError, match="Offline sources"):
        train_eval_split("maths", 5, 5, seed=0)


@pytest.fixture
def fake_hub(monkeypatch):
    """A stand-in `datasets` module: the hub is unreachable here, the parsing of its rows is not."""
    calls = []

    def load_dataset(name, config=None, split="train"):
        calls.append((name, config, split))
        if name == "openai/gsm8k":
            rows = [{"question": f"{split} question {i}?", "answer": f"Work.\n#### {1000 + i:,}"} for i in range(6)]
            return [*rows, {"question": "shared question?", "answer": "#### 7"}]
        return [
            {"problem": f"{split} problem {i}", "solution": f"So it is $\\boxed{{\\frac{{{i}}}{{{i + 2}}}}}$."}
            for i in range(5)
        ] + [{"problem": "no box", "solution": "It is 3."}]

    module = types.ModuleType("datasets")
    module.load_dataset = load_dataset  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    return calls


def test_hub_gsm8k_uses_test_for_eval_and_train_for_train(fake_hub):
    train, held_out = train_eval_split("gsm8k", 5, 2, seed=0)
    assert {split for _, _, split in fake_hub} == {"test", "train"}
    assert all(p.question.startswith("test") or p.question == "shared question?" for p in held_out)
    assert not {p.question for p in train} & {p.question for p in held_out}
    problems = load_math("gsm8k", 6, seed=0)
    assert {p.answer for p in problems} <= {str(1000 + i) for i in range(6)} | {"7"}  # after "####", no commas
    assert all(parses(p.answer) for p in problems)
    with pytest.raises(ValueError, match="train_size=8 exceeds"):
        train_eval_split("gsm8k", 8, 2, seed=0)


def test_hub_math_takes_the_boxed_answer(fake_hub):
    problems = load_math("math", 5, seed=0)
    assert {p.question for p in problems} == {f"test problem {i}" for i in range(5)}
    assert all(p.answer.startswith("\\frac") for p in problems)
    assert any(answers_match("1/3", p.answer) for p in problems)  # \frac{1}{3}
    with pytest.raises(ValueError, match="n=6 exceeds the 5"):
        load_math("math", 6, seed=0)  # the row without \boxed is skipped


def test_hub_failure_is_a_clear_runtime_error(monkeypatch):
    def unreachable(*args, **kwargs):
        raise ConnectionError("no network")

    module = types.ModuleType("datasets")
    module.load_dataset = unreachable  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "datasets", module)
    for source in HUB_SOURCES:
        with pytest.raises(RuntimeError, match="no network.*Offline, use one of the sources.*gsm8k_offline"):
            load_math(source, 5, seed=0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("so $\\boxed{5}$.", "5"),
        ("$\\boxed{\\frac{1}{2}}$", "\\frac{1}{2}"),
        ("\\boxed{1} then \\boxed{ 2 }", "2"),
        ("\\fbox{3}", "3"),
        ("\\boxed 7$.", "7"),
        ("\\boxed{unclosed", None),
        ("\\boxed{}", None),
        ("no box", None),
    ],
)
def test_extract_boxed(text, expected):
    assert extract_boxed(text) == expected


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("239", "239"),
        ("@@3/2@@", "3/2"),
        ("@@2^(n-1)@@", "2^(n-1)"),
        ("@@C(10, 5)@@, or equivalently @@252@@", "252"),
        ("100 (i.e., all values)", "100"),
        ("-3 is the only possible value", "-3"),
        ("@@sqrt(3)/3@@, or equivalently @@1/sqrt(3)@@", "1/sqrt(3)"),
        ("No", None),
        ("No integer solutions", None),
        ("@@x=6, y=5@@", None),
        ("@@2^floor(n/2)*floor(n/2)!@@", None),
        ("@@x(x-1)(x-2)...(x-2022)@@", None),
        ("1 and 3", None),
    ],
)
def test_champ_answer_cleaning(raw, expected):
    assert champ_answer(raw) == expected


def test_build_messages():
    messages = build_messages("Calculate 2 + 2.")
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    assert messages[0]["content"] == SYSTEM_PROMPT and messages[-1]["content"] == "Calculate 2 + 2."
    assert messages[1:3] == list(ONE_SHOT)
    assert "<think>" in SYSTEM_PROMPT and "<answer>" in SYSTEM_PROMPT
    assert [m["role"] for m in build_messages("q", one_shot=False)] == ["system", "user"]
    messages[1]["content"] = "changed"  # callers may edit their copy without touching the demo
    assert ONE_SHOT[0]["content"] != "changed"


def test_demo_is_never_a_problem():
    demo = ONE_SHOT[0]["content"]
    assert all(p.question != demo for p in load_math("arithmetic", 200, seed=0))


def test_the_one_shot_demo_never_appears_as_a_problem(monkeypatch):
    """reasoning-gym's stream made to open with the demo in brackets: load_math skips it (catches: the demo left out
    of the keys already seen, or the bracket-blind key)."""
    import reasoning_gym

    items = [{"question": "Calculate ( 7 + 6 ).", "answer": "13"},  # the demo, bracketed
             {"question": "Calculate 1 + 1.", "answer": "2"}]
    monkeypatch.setattr(reasoning_gym, "create_dataset", lambda name, size, seed, **config: items)
    assert [p.question for p in load_math("arithmetic", 1, seed=0)] == ["Calculate 1 + 1."]
