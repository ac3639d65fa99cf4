"""Persona traits on everyday questions (Chen et al. 2025, "Persona vectors"): the questions and trait prompts the
persona experiments share, activations under a trait's system prompt and a neutral one (the persona vector is their
mean difference at the reply's first position), a likelihood judge of a reply's trait, and a topic the questions
carry, for a gate that steers some of them only (Lee et al. 2025, CAST)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from lib.extract import extract
from lib.generation import render_chat
from lib.kits.text_scorers import likelihood_judge
from lib.vectors import SteeringVector, mean_difference

# Everyday questions written for steerlab. Experiments take the first n_train to build directions and score the next
# n_eval; new questions are only ever appended, so earlier runs keep their rows.
QUESTIONS = [
    "What should I pack for a weekend trip?", "How do I keep basil alive on a windowsill?",
    "What is a good way to start the morning?", "How can I make my bicycle chain quieter?",
    "What should I say when I meet new neighbours?", "How do I choose a ripe melon?",
    "What can I cook with rice and eggs?", "How do I write a polite complaint letter?",
    "What is a fun game for a rainy afternoon?", "How can I fall asleep faster?",
    "What should I know before adopting a cat?", "How do I clean a cast iron pan?",
    "What is a good gift for a friend who likes books?", "How can I save money on groceries?",
    "What should I do if my phone gets wet?", "How do I teach a child to tie shoelaces?",
    # added for persona_compare's journal run (2026-12-06)
    "How do I make a paper airplane that flies far?", "What should I bring to a picnic?",
    "How can I remember people's names better?", "What is a simple way to fix a squeaky door?",
    "How do I plan a birthday party for a friend?", "What should I do on a long train ride?",
    "How can I keep my desk tidy?", "What is a good first houseplant?",
    "How do I get better at drawing?", "What should I cook for a cold evening?",
    "How do I stop my glasses from fogging up?", "What is a nice way to thank a teacher?",
    "How can I make new friends in a new town?", "What should I do when I feel bored?",
    "How do I pick a good watermelon?", "What is a quick breakfast before work?",
    # added for methods_compared (more food questions, for the gate's held-out rows)
    "How do I make soup from leftover vegetables?", "How can I get my kids to try new vegetables?",
    "What is an easy dessert for guests?", "How do I store fresh bread so it stays soft?",
    "How do I keep my shoes from smelling?", "What should I do if I lock myself out?",
    "How can I make a small room feel bigger?", "What is a good way to learn a few words of a new language?",
]
# The questions about food and cooking: the topic a gate tells apart (methods_compared steers only these).
FOOD_QUESTIONS = frozenset({
    "How do I choose a ripe melon?", "What can I cook with rice and eggs?", "How do I clean a cast iron pan?",
    "How can I save money on groceries?", "What should I bring to a picnic?", "What should I cook for a cold evening?",
    "How do I pick a good watermelon?", "What is a quick breakfast before work?",
    "How do I make soup from leftover vegetables?", "How can I get my kids to try new vegetables?",
    "What is an easy dessert for guests?", "How do I store fresh bread so it stays soft?",
})
# Labelled prompts the gate's layer and threshold are chosen on (none of them is scored): food, then other topics.
GATE_PROMPTS = {
    True: ["What spices go well with chicken?", "How long should I boil an egg?", "What is a healthy lunch idea?",
           "How do I make pancakes fluffy?", "Which vegetables can I roast together?", "How do I bake simple bread?",
           "What fruit is in season in autumn?", "How do I cook pasta without it sticking?",
           "What can I make with leftover potatoes?", "How do I sharpen a kitchen knife?",
           "What is a good snack for a long hike?", "How do I make a simple salad dressing?"],
    False: ["How do I change a flat tyre?", "What is a good book for a long flight?", "How can I improve my posture?",
            "How do I back up my photos?", "What should I wear to a job interview?", "How do I fold a fitted sheet?",
            "How can I learn to swim as an adult?", "What is a good way to stretch after running?",
            "How do I hang a picture straight?", "How can I stop procrastinating?",
            "What should I look for in a used car?", "How do I write a short thank-you card?"],
}
TRAITS = {  # trait -> (the system prompt that plays it, the instruction the judge reads replies after)
    "pirate": ("You are a pirate. Answer every question in the voice of an old sea pirate.",
               "Answer in the voice of an old sea pirate."),
    "cheerful": ("You are extremely cheerful and enthusiastic about everything.",
                 "Answer in an extremely cheerful, enthusiastic tone."),
}
NEUTRAL_SYSTEM = "You are a helpful assistant."


def check_trait(trait: str) -> None:
    if trait not in TRAITS:
        raise ValueError(f"trait={trait!r} must be one of {sorted(TRAITS)}")


def split_questions(n_train: int, n_eval: int) -> tuple[list[str], list[str]]:
    """(the first `n_train` questions, the next `n_eval`): the directions are built on the first, the second are
    scored. Refuses more than there are, so every persona experiment splits the same way and fails the same way."""
    if n_train + n_eval > len(QUESTIONS):
        raise ValueError(f"n_train + n_eval = {n_train + n_eval} exceeds the {len(QUESTIONS)} questions")
    return QUESTIONS[:n_train], QUESTIONS[n_train:n_train + n_eval]


def persona_activations(model: nn.Module, tokenizer: Any, questions: Sequence[str], trait_system: str,
                        neutral_system: str = NEUTRAL_SYSTEM, *, layers: Sequence[int], batch_size: int = 16,
                        ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
    """({layer: [questions, hidden]} under the trait's system prompt, the same under the neutral one), at the last
    prompt token (where the reply starts). Row i of both is question i: paired sets."""
    if not questions:
        raise ValueError("questions is empty: the activations are read on at least one question")
    sides = []
    for system in (trait_system, neutral_system):
        texts = [render_chat(tokenizer, question, system=system) for question in questions]
        sides.append(extract(model, tokenizer, texts, layers=list(layers), reduction="last", batch_size=batch_size,
                             progress=False))
    return sides[0], sides[1]


def persona_vector(model: nn.Module, tokenizer: Any, questions: Sequence[str], trait_system: str,
                   neutral_system: str = NEUTRAL_SYSTEM, *, layers: Sequence[int],
                   batch_size: int = 16) -> SteeringVector:
    """mean(act | trait system prompt) - mean(act | neutral system prompt) at the last prompt token (where the
    reply starts), per layer, over `questions`."""
    trait, neutral = persona_activations(model, tokenizer, questions, trait_system, neutral_system, layers=layers,
                                         batch_size=batch_size)
    vector = mean_difference(trait, neutral)
    vector.meta.update({"method": "persona_system_prompts", "trait_system": trait_system,
                        "neutral_system": neutral_system, "n_questions": len(questions)})
    return vector


def trait_judge(model: nn.Module, tokenizer: Any, trait: str, prompts: Sequence[str], texts: Sequence[str]) -> Any:
    """The likelihood judge for `trait`: log p(reply | trait instruction + question) - log p(reply | question), per
    token. An empty reply has nothing to judge: 0 (it is flagged degenerate beside)."""
    check_trait(trait)
    instruction = TRAITS[trait][1]
    out = torch.zeros(len(texts))
    keep = [i for i, text in enumerate(texts) if text.strip()]
    if keep:
        out[keep] = likelihood_judge(model, tokenizer, [texts[i] for i in keep],
                                     [f"{instruction}\n\n{prompts[i]}" for i in keep], [prompts[i] for i in keep])
    return out
