"""Side-by-side generation: original and edited answers in one batched pass.

The prompt is put in several batch rows and the edit is routed to some rows only, so one
forward per token yields both answers (base weights held once, plus the edit's deltas). Two
optional extra rows re-score each answer under the other model (teacher-forced on the other
row's tokens), giving the probability the original model gave the edited answer's token and
vice versa, which the chat view shows where the answers diverge.

In a multi-turn chat each model continues its own conversation (its own earlier answers), so
the rows' prompts differ: they are left-padded, masked, and given positions that count real
tokens only, so every row computes what it would alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator, Sequence
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
    prompt_ids_original: list[int] = field(default_factory=list)  # what each model read (its own conversation)
    prompt_ids_edited: list[int] = field(default_factory=list)
    original_ids: list[int] = field(default_factory=list)
    edited_ids: list[int] = field(default_factory=list)
    original_p: list[float] = field(default_factory=list)  # original model's p of its own token
    edited_p: list[float] = field(default_factory=list)
    p_original_of_edited: list[float] = field(default_factory=list)  # original model, edited token
    p_edited_of_original: list[float] = field(default_factory=list)
    done: bool = False

    def texts(self, tokenizer) -> tuple[str, str]:
        """Both answers as text, special tokens (the end-of-turn marker) left out."""
        return (tokenizer.decode(self.original_ids, skip_special_tokens=True),
                tokenizer.decode(self.edited_ids, skip_special_tokens=True))

    def prompt_texts(self, tokenizer) -> tuple[str, str]:
        """The prompt each model read, as text with its template's markers (what it was conditioned on)."""
        return (tokenizer.decode(self.prompt_ids_original), tokenizer.decode(self.prompt_ids_edited))

    def first_divergence(self) -> int | None:
        for i, (a, b) in enumerate(zip(self.original_ids, self.edited_ids)):
            if a != b:
                return i
        if len(self.original_ids) != len(self.edited_ids):
            return min(len(self.original_ids), len(self.edited_ids))
        return None


Turn = tuple[str, str]  # (the user's message, this model's answer)


def build_prompt_ids(lm: LoadedModel, prompt: str, use_chat_template: bool | None,
                     history: Sequence[Turn] = ()) -> list[int]:
    """The ids a model reads for ``prompt`` after its own earlier ``history``: the chat template
    for instruct models; for base models plain concatenation (each earlier message followed by
    its answer, one turn a line, then the prompt)."""
    use = lm.is_chat if use_chat_template is None else use_chat_template
    if use and lm.is_chat:
        messages = [m for user, answer in history
                    for m in ({"role": "user", "content": user}, {"role": "assistant", "content": answer})]
        enc = lm.tokenizer.apply_chat_template([*messages, {"role": "user", "content": prompt}],
                                               add_generation_prompt=True, tokenize=True, return_dict=True)
        return list(enc["input_ids"])
    return lm.tokenizer("".join(f"{user}{answer}\n" for user, answer in history) + prompt).input_ids


def stop_ids(lm: LoadedModel) -> set[int]:
    """The tokens that end an answer: the end-of-sequence ids, and the chat template's end-of-turn
    marker (the special token it writes right after an assistant message, e.g. ``<|im_end|>``)."""
    cfg = lm.model.generation_config.eos_token_id
    ids = {t for t in [lm.tokenizer.eos_token_id, *([cfg] if isinstance(cfg, int) else (cfg or []))]
           if t is not None}
    if lm.is_chat:
        marker = "\u2063unlearnviz\u2063"
        try:
            text = lm.tokenizer.apply_chat_template([{"role": "user", "content": "hi"},
                                                     {"role": "assistant", "content": marker}], tokenize=False)
        except Exception:  # noqa: BLE001 - a template that needs more (tools, a system turn): eos only
            return ids
        after = text.split(marker, 1)[-1] if marker in text else ""
        special = set(lm.tokenizer.all_special_ids)
        for tok in lm.tokenizer(after, add_special_tokens=False).input_ids:
            if tok in special:
                ids.add(tok)
                break
    return ids


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
    history_original: Sequence[Turn] = (),
    history_edited: Sequence[Turn] = (),
) -> Iterator[SideBySide]:
    """Yield the growing pair of answers after every token (original | edited); each model reads
    its own earlier turns (``history_original``, ``history_edited``) before ``prompt``."""
    settings = settings or GenSettings()
    if not prompt.strip():
        raise UserError("the prompt is empty")
    ids_a = build_prompt_ids(lm, prompt, settings.use_chat_template, history_original)
    ids_b = build_prompt_ids(lm, prompt, settings.use_chat_template, history_edited)
    longest = max(len(ids_a), len(ids_b))
    if longest + settings.max_new_tokens > lm.max_length:
        if history_original or history_edited:
            raise UserError(f"the conversation has {longest} tokens; with {settings.max_new_tokens} new tokens "
                            f"that exceeds the model's context of {lm.max_length}; start a new conversation")
        raise UserError(f"the prompt has {longest} tokens; with {settings.max_new_tokens} new tokens that exceeds "
                        f"the model's context of {lm.max_length}; shorten it")
    # rows: 0 original, 1 edited, 2 original re-scoring row 1's tokens, 3 edited re-scoring row 0's
    n_rows = 4 if settings.cross_probs else 2
    edited_rows = torch.tensor([0.0, 1.0, 0.0, 1.0][:n_rows])
    plan = None
    if edit_plan is not None:
        plan = dataclasses.replace(edit_plan, rows=edited_rows)  # every part of the edit, on the edited rows
    device = lm.device
    rows = [ids_a, ids_b, ids_b, ids_a][:n_rows]
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    input_ids = torch.tensor([[pad] * (longest - len(r)) + r for r in rows], device=device)  # left-padded
    attention = torch.tensor([[0] * (longest - len(r)) + [1] * len(r) for r in rows], device=device)
    positions = (attention.cumsum(-1) - 1).clamp(min=0)  # real tokens count from 0 in every row
    eos = stop_ids(lm)
    gen = torch.Generator(device="cpu").manual_seed(settings.seed) if settings.temperature > 0 else None
    state = SideBySide(prompt=prompt, prompt_ids_original=list(ids_a), prompt_ids_edited=list(ids_b))
    past = None
    finished = [False, False]
    step_input = input_ids
    for _ in range(settings.max_new_tokens):
        if should_stop and should_stop():
            break
        with lm.router.apply(plan):
            out = lm.model(input_ids=step_input, attention_mask=attention, position_ids=positions,
                           past_key_values=past, use_cache=True, logits_to_keep=1)
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
        positions = positions[:, -1:] + 1
        attention = torch.cat([attention, torch.ones((n_rows, 1), dtype=attention.dtype, device=device)], 1)
    state.done = True
    yield state


def side_by_side(lm: LoadedModel, prompt: str, edit_plan: RoutingPlan | None,
                 settings: GenSettings | None = None, history_original: Sequence[Turn] = (),
                 history_edited: Sequence[Turn] = ()) -> SideBySide:
    last = None
    for last in stream_side_by_side(lm, prompt, edit_plan, settings, history_original=history_original,
                                    history_edited=history_edited):
        pass
    return last


def divergence_tokens(lm: LoadedModel, state: SideBySide) -> list[dict]:
    """Per edited-answer token: text, p under edited, p under original, diverged or not. Special
    tokens (the end-of-turn marker) are not part of the answer and are left out."""
    rows = []
    special = set(lm.tokenizer.all_special_ids)
    for i, tok in enumerate(state.edited_ids):
        if tok in special:
            continue
        same = i < len(state.original_ids) and state.original_ids[i] == tok
        rows.append({"token": lm.tokenizer.decode([tok]), "p_edited": state.edited_p[i],
                     "p_original": state.p_original_of_edited[i] if i < len(state.p_original_of_edited) else None,
                     "diverged": not same})
    return rows

