"""Shared fixtures. Heavy imports and models are built once per session (cold imports cost 10-30 s)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import torch

from lib.io import REPO_ROOT
from lib.models import tiny_model

HOOK_ARCHS = ("llama", "qwen2", "gpt2", "gemma3", "gpt_neox")
NOTEBOOKS = sorted(p.stem for p in (REPO_ROOT / "nbs").glob("*.py"))  # each pairs with lib/experiments/<stem>.py


@pytest.fixture(scope="session")
def tiny_models() -> dict[str, torch.nn.Module]:
    return {arch: tiny_model(arch, n_layers=3, seed=1) for arch in HOOK_ARCHS}


@pytest.fixture(scope="session")
def embedded():
    """The embedded default (SmolLM2-135M-Instruct); converts the GGUF once per cache dir."""
    from lib.models import load_model

    torch.set_num_threads(2)
    return load_model()


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory):
    """A 2-layer Llama with the embedded default's tokenizer, saved as an ordinary Hugging Face folder."""
    from transformers import AutoTokenizer

    from lib.models import embedded_model_dir

    tokenizer = AutoTokenizer.from_pretrained(embedded_model_dir())
    model = tiny_model("llama", n_layers=2, hidden=64, vocab=len(tokenizer))
    folder = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one thread for the block: a 64-wide model gains nothing from two, and on a busy machine they spin."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("STEERLAB_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def padded_batch(lengths: list[int], side: str, vocab: int = 256, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random token rows of the given lengths, padded with id 0 on `side`."""
    from lib.generation import pad_batch

    generator = torch.Generator().manual_seed(seed)
    rows = [torch.randint(1, vocab, (n,), generator=generator).tolist() for n in lengths]
    return pad_batch(rows, 0, side)


TEXTS = ["the cat sat", "a much longer sentence here", "hi", "numbers 1 2 3", "steer me"]


class ByteTokenizer:
    """The tests' one stand-in tokenizer: bytes to ids 3..202 (pad 0, eos 2); with `chat=True`, a plain-text
    chat template ("[role]content" lines, then "[assistant]") for the chat paths."""

    pad_token_id = 0
    eos_token_id = 2

    def __init__(self, chat: bool = False) -> None:
        self.chat_template = "[role]content" if chat else None

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": [3 + (b % 200) for b in text.encode()]}

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(i - 3 for i in ids if i >= 3).decode(errors="backslashreplace")  # distinct bytes stay distinct

    def batch_decode(self, rows, skip_special_tokens: bool = True) -> list[str]:
        return [self.decode([int(i) for i in row if int(i) != self.eos_token_id]) for row in rows]

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True) -> str:
        if self.chat_template is None:
            raise ValueError("this ByteTokenizer has no chat template (ByteTokenizer(chat=True) has one)")
        return "".join(f"[{m['role']}]{m['content']}\n" for m in messages) + "[assistant]"



# ----------------------------------------------------------------------------- the tests' own route (no lib.hooks)
# tests/experiments/ check each experiment's steps against these: plain forward hooks on a Llama's decoder blocks
# (`model.model.layers`) and one unpadded row at a time, so padding, batching and lib's steering are not on the path.


@contextmanager
def hand_steering(model: torch.nn.Module, additions: dict[int, torch.Tensor]) -> Iterator[None]:
    """Add `additions[layer]` to that block's output at every position of every forward call (lib's
    positions="all"), through plain forward hooks; removed on exit."""
    def adder(vector: torch.Tensor):
        def hook(module, args, output):
            return (output[0] + vector, *output[1:]) if isinstance(output, tuple) else output + vector
        return hook

    handles = [model.model.layers[layer].register_forward_hook(adder(v)) for layer, v in additions.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def hand_block_outputs(model: torch.nn.Module, ids: list[int]) -> dict[int, torch.Tensor]:
    """Every block's output, [tokens, hidden], for one unpadded row."""
    seen: dict[int, torch.Tensor] = {}

    def keeper(layer: int):
        def hook(module, args, output):
            seen[layer] = (output[0] if isinstance(output, tuple) else output)[0].detach().clone()
        return hook

    handles = [block.register_forward_hook(keeper(i)) for i, block in enumerate(model.model.layers)]
    try:
        model(torch.tensor([ids]))
    finally:
        for handle in handles:
            handle.remove()
    return seen


@torch.no_grad()
def hand_greedy(model: torch.nn.Module, ids: list[int], new_tokens: int, eos: int | None = None) -> list[int]:
    """Greedy continuation of one unpadded row, a token at a time with no KV cache (a full forward per token)."""
    row = list(ids)
    for _ in range(new_tokens):
        token = int(model(torch.tensor([row])).logits[0, -1].argmax())
        if token == eos:
            break
        row.append(token)
    return row[len(ids):]


@torch.no_grad()
def hand_reply_logprob(model: torch.nn.Module, prompt_ids: list[int], reply_ids: list[int]) -> float:
    """Mean log-probability per token of `reply_ids` after `prompt_ids`, one unpadded row."""
    logprobs = torch.log_softmax(model(torch.tensor([prompt_ids + reply_ids])).logits[0].float(), dim=-1)
    start = len(prompt_ids)
    return float(torch.stack([logprobs[start + i - 1, token] for i, token in enumerate(reply_ids)]).mean())


@torch.no_grad()
def hand_kl(model: torch.nn.Module, rows: list[list[int]], additions: dict[int, torch.Tensor]) -> float:
    """Mean KL(unsteered || steered) per token over unpadded rows, nats: the side-effect measure by hand."""
    total, count = 0.0, 0
    for ids in rows:
        reference = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        with hand_steering(model, additions):
            steered = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
        total += float((reference.exp() * (reference - steered)).sum())
        count += len(ids)
    return total / count
