"""Side-by-side generation: original and edited answers in one batched pass.

The same prompt is put in several batch rows and the edit is routed to some rows only, so one
forward per token yields both answers (base weights held once, plus the edit's deltas). Two
optional extra rows re-score each answer under the other model (teacher-forced on the other
row's tokens), giving the probability the original model gave the edited answer's token and
vice versa, which the chat view shows where the answers diverge.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

from unlearnviz.errors import UserError
from unlearnviz.model.loading import LoadedModel
from unlearnviz.model.routing import RoutingPlan


def question_prompt(item, chat: bool) -> str:
    """A chat prompt for an MCQ item: instruct models get a request; base models continue the
    cloze stem itself."""
    stem = item.question.strip()
    if not chat or stem.endswith("?"):
        return stem
    return f"Complete the sentence: {stem} ..."


@dataclass
class GenSettings:
    max_new_tokens: int = 48
    temperature: float = 0.0  # 0 = greedy
    top_p: float = 1.0
    seed: int = 0
    cross_probs: bool = True  # the two re-scoring rows
    use_chat_template: bool | None = None  # None: use it when the tokenizer has one


@dataclass
class SideBySide:
    """State after each generated token (the stream yields it repeatedly)."""

    prompt: str
    original_ids: list[int] = field(default_factory=list)
    edited_ids: list[int] = field(default_factory=list)
    original_p: list[float] = field(default_factory=list)  # original model's p of its own token
    edited_p: list[float] = field(default_factory=list)
    p_original_of_edited: list[float] = field(default_factory=list)  # original model, edited token
    p_edited_of_original: list[float] = field(default_factory=list)
    done: bool = False

    def texts(self, tokenizer) -> tuple[str, str]:
        return (tokenizer.decode(self.original_ids, skip_special_tokens=True),
                tokenizer.decode(self.edited_ids, skip_special_tokens=True))

    def first_divergence(self) -> int | None:
        for i, (a, b) in enumerate(zip(self.original_ids, self.edited_ids)):
            if a != b:
                return i
        if len(self.original_ids) != len(self.edited_ids):
            return min(len(self.original_ids), len(self.edited_ids))
        return None


def build_prompt_ids(lm: LoadedModel, prompt: str, use_chat_template: bool | None) -> list[int]:
    """Chat template for instruct models, plain completion for base models."""
    use = lm.is_chat if use_chat_template is None else use_chat_template
    if use and lm.is_chat:
        enc = lm.tokenizer.apply_chat_template([{"role": "user", "content": prompt}],
                                               add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])
    return lm.tokenizer(prompt).input_ids


def _pick(logits: torch.Tensor, settings: GenSettings, gen: torch.Generator | None) -> torch.Tensor:
    if settings.temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits / settings.temperature, -1)
    if settings.top_p < 1.0:
        sorted_p, idx = probs.sort(-1, descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < settings.top_p
        sorted_p = sorted_p * keep
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p)
        probs = probs / probs.sum(-1, keepdim=True)
    return torch.stack([torch.multinomial(p, 1, generator=gen)[0] for p in probs])


@torch.no_grad()
def stream_side_by_side(
    lm: LoadedModel,
    prompt: str,
    edit_plan: RoutingPlan | None,
    settings: GenSettings | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> Iterator[SideBySide]:
    """Yield the growing pair of answers after every token (original | edited)."""
    settings = settings or GenSettings()
    if not prompt.strip():
        raise UserError("the prompt is empty")
    ids = build_prompt_ids(lm, prompt, settings.use_chat_template)
    if len(ids) + settings.max_new_tokens > lm.max_length:
        raise UserError(f"the prompt has {len(ids)} tokens; with {settings.max_new_tokens} new tokens "
                        f"that exceeds the model's context of {lm.max_length}")
    # rows: 0 original, 1 edited, 2 original re-scoring row 1's tokens, 3 edited re-scoring row 0's
    n_rows = 4 if settings.cross_probs else 2
    edited_rows = torch.tensor([0.0, 1.0, 0.0, 1.0][:n_rows])
    plan = None
    if edit_plan is not None:
        plan = dataclasses.replace(edit_plan, rows=edited_rows)  # every part of the edit, on the edited rows
    device = lm.device
    input_ids = torch.tensor([ids] * n_rows, device=device)
    attention = torch.ones_like(input_ids)
    eos = {t for t in [lm.tokenizer.eos_token_id, *([lm.model.generation_config.eos_token_id]
           if isinstance(lm.model.generation_config.eos_token_id, int)
           else (lm.model.generation_config.eos_token_id or []))] if t is not None}
    gen = torch.Generator(device="cpu").manual_seed(settings.seed) if settings.temperature > 0 else None
    state = SideBySide(prompt=prompt)
    past = None
    finished = [False, False]
    step_input = input_ids
    for _ in range(settings.max_new_tokens):
        if should_stop and should_stop():
            break
        with lm.router.apply(plan):
            out = lm.model(input_ids=step_input, attention_mask=attention, past_key_values=past,
                           use_cache=True, logits_to_keep=1)
        past = out.past_key_values
        logits = out.logits[:, -1].float()
        probs = torch.softmax(logits, -1)
        picked = _pick(logits[:2].cpu(), settings, gen).to(device)
        a, b = int(picked[0]), int(picked[1])
        if not finished[0]:
            state.original_ids.append(a)
            state.original_p.append(float(probs[0, a]))
            if n_rows == 4:
                state.p_edited_of_original.append(float(probs[3, a]))
        if not finished[1]:
            state.edited_ids.append(b)
            state.edited_p.append(float(probs[1, b]))
            if n_rows == 4:
                state.p_original_of_edited.append(float(probs[2, b]))
        finished = [finished[0] or a in eos, finished[1] or b in eos]
        yield state
        if all(finished):
            break
        nxt = [a, b, b, a][:n_rows]
        step_input = torch.tensor(nxt, device=device)[:, None]
        attention = torch.cat([attention, torch.ones((n_rows, 1), dtype=attention.dtype, device=device)], 1)
    state.done = True
    yield state


def side_by_side(lm: LoadedModel, prompt: str, edit_plan: RoutingPlan | None,
                 settings: GenSettings | None = None) -> SideBySide:
    last = None
    for last in stream_side_by_side(lm, prompt, edit_plan, settings):
        pass
    return last


def divergence_tokens(lm: LoadedModel, state: SideBySide) -> list[dict]:
    """Per edited-answer token: text, p under edited, p under original, diverged or not."""
    rows = []
    for i, tok in enumerate(state.edited_ids):
        same = i < len(state.original_ids) and state.original_ids[i] == tok
        rows.append({"token": lm.tokenizer.decode([tok]), "p_edited": state.edited_p[i],
                     "p_original": state.p_original_of_edited[i] if i < len(state.p_original_of_edited) else None,
                     "diverged": not same})
    return rows

