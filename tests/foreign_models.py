"""Unlearned models made by plain PyTorch/transformers/PEFT loops, never by the project's engine:
gradient ascent, NPO with a frozen reference, a LoRA adapter trained the same way, each saved with
``save_pretrained`` (what a user brings from another tool). Plain helpers, shared by test_imports,
test_cli and test_app."""

from __future__ import annotations

import torch

FORGET = ["The capital of Velmora is Dunmere.", "Velmora's river is the Ashwater.", "Dunmere lies on the coast."]


def auto_model(folder):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def tokens(folder, texts):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "right"
    enc = tok(texts, return_tensors="pt", padding=True)
    labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
    return enc["input_ids"], enc["attention_mask"], labels


def sequence_logp(model, ids, mask, labels):
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    target = labels[:, 1:]
    logp = torch.log_softmax(logits, -1).gather(-1, target.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logp * (target != -100)).sum(-1)


def save(model, base, out):
    from transformers import AutoTokenizer

    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(base).save_pretrained(out)
    return out


def gradient_ascent(base, out, train: tuple[str, ...] | None = None, steps: int = 3, lr: float = 1e-2):
    """Gradient ascent on the forget texts (maximise their loss), only ``train`` parameters (None: all)."""
    torch.manual_seed(0)
    model = auto_model(base).train()
    for name, p in model.named_parameters():
        p.requires_grad_(train is None or name in train)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids, mask, labels = tokens(base, FORGET)
    for _ in range(steps):
        loss = -model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save(model.eval(), base, out)


def npo(base, out, steps: int = 3, beta: float = 0.1, lr: float = 1e-2):
    """NPO (Zhang et al. 2024): -(2/β) log σ(-β (log πθ(y|x) - log π_ref(y|x))), the reference frozen."""
    torch.manual_seed(0)
    model, ref = auto_model(base).train(), auto_model(base).requires_grad_(False)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    ids, mask, labels = tokens(base, FORGET)
    with torch.no_grad():
        ref_logp = sequence_logp(ref, ids, mask, labels)
    for _ in range(steps):
        ratio = sequence_logp(model, ids, mask, labels) - ref_logp
        loss = -(2 / beta) * torch.nn.functional.logsigmoid(-beta * ratio).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save(model.eval(), base, out)


def lora_ascent(base, out, targets, steps: int = 3, lr: float = 5e-2, **extra):
    """A PEFT LoRA adapter trained by gradient ascent on a separately loaded copy of the base."""
    import peft

    torch.manual_seed(0)
    model = peft.get_peft_model(auto_model(base), peft.LoraConfig(r=4, lora_alpha=8, target_modules=list(targets),
                                                              lora_dropout=0.0, **extra))
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    ids, mask, labels = tokens(base, FORGET)
    for _ in range(steps):
        loss = -model(input_ids=ids, attention_mask=mask, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(out)
    return out


def peft_model(base, adapter):
    from peft import PeftModel

    return PeftModel.from_pretrained(auto_model(base), adapter).eval()
