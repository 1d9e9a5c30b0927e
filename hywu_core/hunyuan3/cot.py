"""The model's own chain of thought: HunyuanImage-3.0-Instruct writes `<think>...</think><recaption>...</recaption>`
before it draws, and the image is then conditioned on that text.

Decoding is plain autoregressive text generation on the same trunk: one prefill of the prompt (system
prompt, input images, instruction, then `Assistant: <think>` or `<recaption>`), then one token at a
time against the growing key / value cache; a new token sits on the text diagonal of the 2D rope (y = x =
its index) and attends to everything before it. Like the release, when `</think>` is written the
`<recaption>` tag is forced next, and generation stops at `</recaption>` (or the end-of-text token, or
`max_new_tokens`). Greedy by default; sampling uses temperature, top-k and top-p with its own seeded
generator (the release draws from the global RNG, so its sampled CoT cannot be replayed).
"""
from dataclasses import dataclass

import torch

from hywu_core.hunyuan3.decoder import KVCache
from hywu_core.hunyuan3.prompt import SPECIAL


@dataclass
class Sampling:
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self):
        if not self.temperature > 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")


def pick(logits, sampling, generator):
    """The next token from (vocab,) logits: argmax, or a draw under temperature / top-k / top-p."""
    if sampling is None:
        return int(logits.argmax())
    scores = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = scores.topk(min(sampling.top_k, scores.numel())).values[-1]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    probs = scores.softmax(-1)
    if sampling.top_p < 1:
        ordered, order = probs.sort(descending=True)
        drop = ordered.cumsum(-1) - ordered > sampling.top_p
        probs = probs.scatter(0, order, ordered.masked_fill(drop, 0.0))
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


@torch.no_grad()
def generate(transformer, inputs, tokenizer, max_new_tokens=1024, sampling=None, transitions=None, stops=None,
             on_token=None, dtype=torch.float32):
    """New token ids after the prompt row `inputs` (a one-row StepInputs without a generated image), and the
    logits each was chosen from. `transitions` {token: forced follow-up ids}; `stops` end generation; `dtype`
    is what the activations are computed in."""
    if inputs.batch_size != 1:
        raise ValueError("CoT generation takes one prompt at a time")
    transitions = dict(transitions if transitions is not None else
                       {tokenizer.id(SPECIAL["end_of_think"]): [tokenizer.id(SPECIAL["recaption"])]})
    stops = set(stops if stops is not None else {tokenizer.id(SPECIAL["end_of_recaption"]), tokenizer.eos_id})
    generator = torch.Generator().manual_seed(int(sampling.seed)) if sampling is not None else None
    cache = KVCache()
    cos, sin = transformer.model.rope(inputs.positions)
    out = transformer.model(transformer.embed_context(inputs, dtype), inputs.attention_mask, cos, sin, kv_cache=cache)
    logits = transformer.lm_head(out.normed[:, -1])[0]
    tokens, chosen_from, pending = [], [], []
    for _ in range(max_new_tokens):
        chosen_from.append(logits.float())
        token = pending.pop(0) if pending else pick(logits, sampling, generator)
        tokens.append(token)
        if on_token is not None:
            on_token(len(tokens), max_new_tokens)
        if token in stops:
            break
        pending += transitions.pop(token, [])
        n = cache.length
        index = torch.tensor([[n]], device=inputs.input_ids.device)
        cos, sin = transformer.model.rope(torch.tensor([[[n, n]]], device=inputs.input_ids.device))
        embed = transformer.model.wte(index.new_tensor([[token]])).to(dtype)
        out = transformer.model(embed, None, cos, sin, kv_cache=cache, indices=index)
        logits = transformer.lm_head(out.normed[:, -1])[0]
    return tokens, torch.stack(chosen_from)


def cot_text(tokenizer, mode, tokens):
    """The CoT as the image prompt takes it: the opening tag the prompt ended with, then the generated text."""
    return SPECIAL[mode] + tokenizer.decode(tokens)
