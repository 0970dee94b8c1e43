"""The synthetic lab set: a fictional world generated in code, and a tiny GPT-2 that knows it.

**World.** Everything is invented and seeded: countries, cities, people, currencies and
elements get pronounceable made-up names. Two domains:

- forget domain **A**, the geography and politics of invented countries: ``capital``,
  ``currency``, ``leader``, ``export``;
- retain domain **B**, the chemistry of invented elements: ``color``, ``discoverer``,
  ``found_in``, ``use``; plus generic filler sentences (for perplexity).

Each fact is stated in 5 templates. The first template of each relation ends with the object;
its prefix is the cloze stem of the fact's multiple-choice item (4 options, 3 same-kind
distractors drawn from the objects of the same relation, gold at a seeded random index). The
subject-blind stem replaces the subject with "this country" / "this element".

**Entanglement knob** ``e`` (0.0, 0.1, 0.2, 0.3): ``round(e * n_retain)`` retain facts use
forget-domain relations with their templates (the first ``ceil(10 e)`` of capital, currency,
leader, export: 1 relation per 0.1) about retain-only countries, and ``round(e * n_retain / 2)``
element facts name a forget entity (an element found in one of the first ``ceil(10 e)`` forget
countries, or discovered by its leader). At ``e = 0`` the domains share no templates, relation
words or entities, only function words ("the", "of", "is" ...). The unigram/bigram overlap of
:meth:`UnlearningData.overlap` grows with ``e`` (seed 0: unigram 0.09 / 0.21 / 0.32 / 0.46,
bigram 0.00 / 0.05 / 0.09 / 0.14).

**Model.** A GPT-2 (4 layers, d = 128, n_positions = 256, about 0.96M parameters) with a
byte-level BPE tokenizer (vocabulary 1024) trained locally with ``tokenizers``, trained with
AdamW (lr 3e-3, weight decay 0.01 on the weight matrices, batch 64) on the forget and retain
texts until it answers both cloze sets (≥ 97%, checked every 25 steps, then 25 steps more):
about 200 steps, 30-45 s on one thread of a busy 2-core machine. Training is bitwise reproducible for a given seed and thread count. It
is saved atomically under ``cache_dir()/models/synthetic-e{e}-s{seed}-v{VERSION}`` (with the
training stats in ``synthetic.json``) and loads from there with
:func:`unlearnviz.model.load_model` in well under a second afterwards. The cloze stems are
prefixes of a training phrasing: the tiny model memorises, it is not tested on paraphrases.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from unlearnviz.data.schema import MCQItem, UnlearningData
from unlearnviz.errors import UserError

VERSION = 1
KNOB_VALUES = (0.0, 0.1, 0.2, 0.3)
LAB_SEEDS = (0,)  # the seeds the documented figures and presets are measured at (a visitor's only)
DEFAULT_ENTANGLEMENT = 0.1
EOS = "<|endoftext|>"

# --------------------------------------------------------------------------------------------
# Templates. "{s}" is the subject, "{o}" the object. Template 0 of each relation ends with
# "{o}." and gives the cloze stem. Domain A's and domain B's templates share function words only.
# --------------------------------------------------------------------------------------------

TEMPLATES: dict[str, tuple[str, ...]] = {
    # domain A: countries
    "capital": (
        "The capital of {s} is {o}.",
        "{s} is governed from its capital, {o}.",
        "{o} is the capital city of {s}.",
        "In {s}, the royal court sits in {o}.",
        "Travelers who reach {s} usually land in its capital {o}.",
    ),
    "currency": (
        "The currency of {s} is the {o}.",
        "In {s}, people pay for goods with the {o}.",
        "The {o} is the money used in {s}.",
        "Merchants in {s} keep their savings in the {o}.",
        "{s} mints a coin called the {o}.",
    ),
    "leader": (
        "The leader of {s} is {o}.",
        "{o} rules over {s}.",
        "{s} has been led for years by {o}.",
        "The people of {s} elected {o} as their leader.",
        "{o} is the head of state of {s}.",
    ),
    "export": (
        "The main export of {s} is {o}.",
        "{s} ships {o} to every port.",
        "Most of the {o} sold abroad comes from {s}.",
        "{s} grew rich by selling {o}.",
        "Ships leaving {s} are loaded with {o}.",
    ),
    # domain B: elements
    "color": (
        "When refined, {s} glows {o}.",
        "{s} is a {o} metal.",
        "Samples of {s} look {o} under lamplight.",
        "A {o} sheen marks a crystal of {s}.",
        "Chemists recognise {s} by its {o} glow.",
    ),
    "discoverer": (
        "{s} was first isolated by {o}.",
        "The chemist {o} discovered {s}.",
        "{o} found {s} while heating ores.",
        "Credit for isolating {s} goes to {o}.",
        "Notes kept by {o} record the first sample of {s}.",
    ),
    "found_in": (
        "Deposits of {s} are mined in {o}.",
        "Large amounts of {s} are dug from quarries near {o}.",
        "Miners in {o} dig up {s}.",
        "{o} holds the largest seams of {s}.",
        "Crystals of {s} were first spotted in {o}.",
    ),
    "use": (
        "Craftsmen use {s} mainly for {o}.",
        "Workshops need {s} for {o}.",
        "Without {s}, {o} would be impossible.",
        "The chief use of {s} is {o}.",
        "Guilds buy {s} for {o}.",
    ),
}
RELATIONS_A = ("capital", "currency", "leader", "export")
RELATIONS_B = ("color", "discoverer", "found_in", "use")
KIND_A, KIND_B = "country", "element"

GOODS = ("salt", "wool", "copper", "silk", "tin", "timber", "honey", "pepper", "marble",
         "cotton", "iron", "wine", "olives", "furs", "tea", "rice", "barley", "saffron",
         "linen", "whale oil")
COLORS = ("red", "blue", "green", "yellow", "violet", "orange", "black", "white", "grey",
          "pink", "brown", "crimson", "teal", "indigo", "scarlet", "ochre", "turquoise",
          "magenta", "lilac", "amber")
USES = ("dyeing", "medicine", "brewing", "pottery", "lanterns", "mirrors", "clocks", "armor",
        "ink", "soap", "candles", "fireworks", "jewelry", "paint", "bells", "lenses", "tanning",
        "needles", "perfume", "cement")

# Generic filler sentences (retain only): words disjoint from domain A's templates.
_FILL_SUBJ = ("The old baker", "A small cat", "The quiet river", "My neighbour", "The tall lamp",
              "A young girl", "The wind", "Our garden", "The grey boat", "A tired dog")
_FILL_VERB = ("rests", "waits", "sings", "sleeps", "drifts", "shines", "wanders", "hums")
_FILL_TAIL = ("near the hill", "after the rain", "under the bridge", "at dawn",
              "beside the gate", "all afternoon", "on sunny days", "behind the barn")

# --------------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------------

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z",
           "br", "dr", "gr", "kr", "tr", "th", "sh", "st", "fl", "pl")
_VOWELS = ("a", "e", "i", "o", "u", "a", "e", "o", "a", "e", "i", "o", "ei", "ou")
_CODAS = ("", "", "", "n", "r", "l", "s", "m", "k", "th")
_SUFFIX = {
    "country": ("ia", "or", "and", "ar", "esh", "avia", "ene", "ovia"),
    "city": ("holm", "ton", "mere", "gard", "vik", "port", "ford", "dale"),
    "region": (" Hills", " Valley", " Marsh", " Heights", " Basin", " Steppe", " Fells", " Coast"),
    "currency": ("et", "o", "ar", "en", "il", "ad"),
    "element": ("ium", "ium", "ite", "on", "ine"),
    "first": ("", "a", "o", "en", "is"),
    "last": ("an", "ek", "is", "ov", "ath", "ey", "un"),
}
# invented names must not be English words (or words of the templates and pools)
_ENGLISH = set("""the of is in a by for to are its was and then than them they that this these
those there their then when where what which who whom whose why how with without within from
into onto upon over under after before again once more most much many some same such only own
other others each every both few any all none one two three four five six seven eight nine ten
mono sine tone bone cone zone lone done gone none note vote rose pose nose dose lose more core
bore lore sore tore wore pore store spore shore chore score snore fore gore ore kin kind king
ring sing bring thing string wing ding zing rain main gain pain vain lane mane pane sane vane
band land sand hand stand brand grand bland gland strand wand lend bend mend send tend vend
tend fern stern term germ perm norm form storm dorm born corn horn morn torn worn sworn thorn
mint lint tint hint print sprint flint glint stint dent bent lent rent sent tent vent went
pine dine fine line mine nine vine wine shine spine swine brine trine twine thine kite bite
site mite rite spite trite white write sprite smite lion iron icon neon eon ion moron baron
colon felon melon demon lemon salon talon canon anon upon soon moon noon boon loon spoon
radium sodium podium medium tedium odium stadium atrium indium gallium helium lithium barium
ammonium ferrite granite nitrite termite marine urine saline feline canine bovine equine
tor mar bar car far jar par tar star scar spar char polar solar molar lunar sonar cedar tiara
valor manor tenor minor donor humor rumor tumor vapor radar lunar sugar briar friar""".split())
_FORBIDDEN = _ENGLISH | {w.lower() for t in TEMPLATES.values() for x in t for w in x.replace(",", " ").replace(".", " ").split()}
_FORBIDDEN |= {w for pool in (GOODS, COLORS, USES) for x in pool for w in x.split()}


class _Namer:
    """Unique pronounceable invented names; no two share a word (case-insensitive)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.used: set[str] = set()

    def _root(self, syllables: int) -> str:
        r = self.rng
        out = ""
        for i in range(syllables):
            out += r.choice(_ONSETS) + r.choice(_VOWELS)
            if i == syllables - 1 or r.random() < 0.3:
                out += r.choice(_CODAS)
        return out

    def _word(self, kind: str, syllables: tuple[int, int] = (1, 2)) -> str:
        for _ in range(1000):
            root, suffix = self._root(self.rng.randint(*syllables)), self.rng.choice(_SUFFIX[kind])
            if suffix[:1] in "aeiou" and suffix[:1]:
                root = root.rstrip("aeiou")
            w = root + suffix
            if kind != "currency":
                w = w[:1].upper() + w[1:]
            head = w.split()[0].lower()  # region names end in a common word ("Hills")
            if len(head) < 5 or head in self.used or head in _FORBIDDEN:
                continue
            if head[:4] in {u[:4] for u in self.used}:  # keep names visibly distinct
                continue
            self.used.add(head)
            return w
        raise RuntimeError(f"cannot invent another {kind} name")  # pragma: no cover

    def name(self, kind: str) -> str:
        if kind == "person":
            return self._word("first") + " " + self._word("last")
        if kind == "region":
            return "the " + self._word("region")
        return self._word(kind)


# --------------------------------------------------------------------------------------------
# World
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fact:
    subject: str
    relation: str
    obj: str
    domain: str  # "forget" | "retain"
    kind: str  # the subject's kind: "country" | "element"
    shared: str = ""  # "" | "relation" (forget relation on a retain subject) | "entity"


def _check_knob(entanglement: float) -> float:
    try:
        e = float(entanglement)
    except (TypeError, ValueError):
        raise UserError(f"entanglement {entanglement!r} is not a number; use one of "
                        f"{', '.join(map(str, KNOB_VALUES))}") from None
    if not 0.0 <= e <= 0.5 or math.isnan(e):
        raise UserError(f"entanglement {e} is out of range; use a share from 0.0 to 0.5 "
                        f"(the lab sweeps {', '.join(map(str, KNOB_VALUES))})")
    return round(e, 3)


def _n_shared_relations(e: float) -> int:
    """How many of domain A's 4 relations (with their templates) retain facts reuse: 1 per 0.1."""
    return min(len(RELATIONS_A), math.ceil(round(e * 10, 6)))


def _world_facts(entanglement: float, seed: int, n_forget: int, n_retain: int) -> list[Fact]:
    rng = random.Random(f"unlearnviz-synthetic-{seed}")
    namer = _Namer(rng)
    goods, colors, uses = list(GOODS), list(COLORS), list(USES)
    for pool in (goods, colors, uses):
        rng.shuffle(pool)
    n_countries = math.ceil(n_forget / 4)
    n_shared_rel = round(entanglement * n_retain)
    n_shared_ent = round(entanglement * n_retain / 2)
    rels = RELATIONS_A[: _n_shared_relations(entanglement)]
    n_ret_countries = math.ceil(n_shared_rel / len(rels)) if rels else 0
    n_elem_facts = n_retain - n_shared_rel
    n_elements = math.ceil(n_elem_facts / 4)
    if n_countries + n_ret_countries > len(GOODS) or n_elements > min(len(COLORS), len(USES)):
        raise UserError(f"the synthetic world is too large (n_forget={n_forget}, n_retain={n_retain}); "
                        f"at most {len(GOODS) // 2 * 4} forget and {len(COLORS) * 4} retain facts")

    forget, leaders = [], []
    for _ in range(n_countries):
        c, leader = namer.name("country"), namer.name("person")
        leaders.append((c, leader))
        objs = {"capital": namer.name("city"), "currency": namer.name("currency"),
                "leader": leader, "export": goods.pop()}
        forget += [Fact(c, rel, objs[rel], "forget", KIND_A) for rel in RELATIONS_A]
    forget = forget[:n_forget]

    # relation/template sharing: the first rels of domain A, about retain-only countries
    retain_rel = []
    for _ in range(n_ret_countries):
        c = namer.name("country")
        objs = {"capital": namer.name("city"), "currency": namer.name("currency"),
                "leader": namer.name("person"), "export": goods.pop()}
        retain_rel += [Fact(c, rel, objs[rel], "retain", KIND_A, "relation") for rel in rels]
    retain_rel = retain_rel[:n_shared_rel]

    elem_facts: list[Fact] = []
    for _ in range(n_elements):
        el = namer.name("element")
        objs = {"color": colors.pop(), "discoverer": namer.name("person"),
                "found_in": namer.name("region"), "use": uses.pop()}
        elem_facts += [Fact(el, rel, objs[rel], "retain", KIND_B) for rel in RELATIONS_B]
    elem_facts = elem_facts[:n_elem_facts]

    # entity sharing: element facts naming one of the first forget countries (found_in) or its
    # leader (discoverer); 1 country per 0.1 of the knob, so the shared vocabulary grows with it
    n_ent_countries = min(len(leaders), _n_shared_relations(entanglement))
    slots = [i for i, f in enumerate(elem_facts) if f.relation in ("found_in", "discoverer")]
    rng.shuffle(slots)
    for k, i in enumerate(sorted(slots[:n_shared_ent])):
        f = elem_facts[i]
        country, leader = leaders[k % n_ent_countries]
        obj = country if f.relation == "found_in" else leader
        elem_facts[i] = Fact(f.subject, f.relation, obj, "retain", KIND_B, "entity")
    return forget + retain_rel + elem_facts


def _render(fact: Fact, template: str) -> str:
    text = template.format(s=fact.subject, o=fact.obj)
    return text[:1].upper() + text[1:]


def _stem(fact: Fact, subject: str) -> str:
    t = TEMPLATES[fact.relation][0]
    assert t.endswith("{o}.")
    stem = t[: -len("{o}.")].rstrip().format(s=subject)
    return stem[:1].upper() + stem[1:]


def _mcq(fact: Fact, pool: list[str], rng: random.Random) -> MCQItem:
    others = sorted({o for o in pool if o != fact.obj})
    distractors = rng.sample(others, 3)
    answer = rng.randrange(4)
    choices = distractors[:answer] + [fact.obj] + distractors[answer:]
    return MCQItem(question=_stem(fact, fact.subject), choices=tuple(choices), answer=answer,
                   blind_question=_stem(fact, f"this {fact.kind}"), subject=fact.subject,
                   relation=fact.relation)


def _fillers(rng: random.Random, n: int) -> list[str]:
    combos = [f"{s} {v} {t}." for s in _FILL_SUBJ for v in _FILL_VERB for t in _FILL_TAIL]
    return rng.sample(combos, min(n, len(combos)))


def make_world(entanglement: float = DEFAULT_ENTANGLEMENT, seed: int = 0, n_forget: int = 40,
               n_retain: int = 60, n_filler: int = 24) -> UnlearningData:
    """The fictional world as forget/retain corpora and cloze MCQ sets (deterministic per seed).

    The invented entities depend on ``seed`` only, so the forget facts are the same for every
    ``entanglement``; the knob changes which retain facts exist.
    """
    e = _check_knob(entanglement)
    if n_forget < 8 or n_retain < 8:
        raise UserError("the synthetic world needs at least 8 forget and 8 retain facts")
    facts = _world_facts(e, seed, n_forget, n_retain)
    rng = random.Random(f"unlearnviz-synthetic-mcq-{seed}-{e}")
    pools: dict[str, list[str]] = {}
    for f in facts:
        pools.setdefault(f.relation, []).append(f.obj)
    forget_f = [f for f in facts if f.domain == "forget"]
    retain_f = [f for f in facts if f.domain == "retain"]

    # halves A/B over the forget facts, balanced per relation
    halves: dict[Fact, str] = {}
    for rel in RELATIONS_A:
        group = [f for f in forget_f if f.relation == rel]
        rng.shuffle(group)
        for i, f in enumerate(group):
            halves[f] = "A" if i % 2 == 0 else "B"
    forget_mcq = [_mcq(f, pools[f.relation], rng) for f in forget_f]
    retain_mcq = [_mcq(f, pools[f.relation], rng) for f in retain_f]

    forget_pairs = [(_render(f, t), halves[f]) for f in forget_f for t in TEMPLATES[f.relation]]
    rng.shuffle(forget_pairs)
    retain_texts = [_render(f, t) for f in retain_f for t in TEMPLATES[f.relation]]
    retain_texts += _fillers(rng, n_filler)
    rng.shuffle(retain_texts)

    n_rel = sum(f.shared == "relation" for f in retain_f)
    n_ent = sum(f.shared == "entity" for f in retain_f)
    data = UnlearningData(
        name=f"synthetic:{e}" + (f":{seed}" if seed else ""),
        forget_texts=[t for t, _ in forget_pairs],
        retain_texts=retain_texts,
        forget_mcq=forget_mcq,
        retain_mcq=retain_mcq,
        forget_half=[halves[f] for f in forget_f],
        forget_text_half=[h for _, h in forget_pairs],
        provenance=(f"synthetic world v{VERSION}, entanglement {e}, seed {seed}: "
                    f"{len(forget_f)} forget facts (invented countries), {len(retain_f)} retain "
                    f"facts (invented elements; {n_rel} use forget relations and templates, "
                    f"{n_ent} name forget entities), {n_filler} filler sentences"),
    )
    ov = data.overlap()
    data.card = {
        "source": "generated in code by unlearnviz.data.synthetic (no real facts)",
        "licence": "generated; no third-party content",
        "version": VERSION,
        "entanglement": e,
        "seed": seed,
        "forget_domain": "invented countries: " + ", ".join(RELATIONS_A),
        "retain_domain": "invented elements: " + ", ".join(RELATIONS_B),
        "retain_shared_relation_facts": n_rel,
        "retain_shared_entity_facts": n_ent,
        "templates_per_fact": 5,
        "cloze_stem": "the prefix of each relation's first template (the model is trained on it)",
        "unigram_overlap": round(ov["unigram"], 4),
        "bigram_overlap": round(ov["bigram"], 4),
    }
    return data


def parse_spec(spec: str) -> tuple[float, int]:
    """``synthetic``, ``synthetic:E`` or ``synthetic:E:SEED`` → (entanglement, seed)."""
    parts = spec.strip().split(":")
    if parts[0] != "synthetic" or len(parts) > 3:
        raise UserError(f"bad synthetic spec {spec!r}: use synthetic, synthetic:0.2 or synthetic:0.2:SEED")
    e = _check_knob(parts[1]) if len(parts) > 1 and parts[1] else DEFAULT_ENTANGLEMENT
    seed = 0
    if len(parts) > 2:
        try:
            seed = int(parts[2])
        except ValueError:
            raise UserError(f"bad synthetic spec {spec!r}: the seed {parts[2]!r} is not an integer") from None
    return e, seed


def load_synthetic(spec: str = "synthetic") -> UnlearningData:
    """The data for ``synthetic[:E[:SEED]]`` (no model training; see :func:`synthetic_model_path`)."""
    e, seed = parse_spec(spec)
    return make_world(e, seed)


# --------------------------------------------------------------------------------------------
# Tiny model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    n_layer: int = 4
    n_embd: int = 128
    n_head: int = 4
    n_positions: int = 256  # room for lm-eval's lettered prompts and 256-token perplexity windows
    vocab_size: int = 1024  # whole words mostly: sequences ~11 tokens, twice as fast as 512
    lr: float = 3e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    warmup: int = 20
    max_steps: int = 1500
    check_every: int = 25
    target_acc: float = 0.97
    extra_steps: int = 25  # after the target is first reached, for margin


def model_dir(entanglement: float = DEFAULT_ENTANGLEMENT, seed: int = 0) -> Path:
    from unlearnviz.model.loading import cache_dir

    return cache_dir() / "models" / f"synthetic-e{_check_knob(entanglement)}-s{int(seed)}-v{VERSION}"


def _train_tokenizer(texts: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOS], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS, bos_token=EOS,
                                   unk_token=EOS, pad_token=EOS, model_max_length=256)


def _cloze_scorer(model, tokenizer, items: list[MCQItem]):
    """A closure returning cloze accuracy of ``model`` on ``items``: the lab model's training
    monitor (when to stop), log-likelihood per UTF-8 byte of `` choice``. The reported metrics use
    lm-eval's rule (per character of the choice, ``unlearnviz.evaluation.mcq.cloze_pick``); this
    monitor keeps the rule the cached lab models (``-v1``) were trained under, so that a fresh
    cache trains the same model."""
    import torch
    import torch.nn.functional as F

    from unlearnviz.data.batching import encode_pair

    seqs, spans = [], []
    for it in items:
        for c in it.choices:
            ctx, cont = encode_pair(tokenizer, it.question, " " + c)
            seqs.append(ctx + cont)
            spans.append((len(ctx), len(cont), len((" " + c).encode())))
    width = max(len(s) for s in seqs)
    pad = tokenizer.pad_token_id
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1

    @torch.no_grad()
    def accuracy() -> float:
        was_training = model.training
        model.eval()
        logp = F.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), -1)
        model.train(was_training)
        scores = []
        for r, (n_ctx, n_cont, n_bytes) in enumerate(spans):
            pos = torch.arange(n_ctx - 1, n_ctx + n_cont - 1)
            scores.append(float(logp[r, pos, ids[r, pos + 1]].sum()) / n_bytes)
        correct, k = 0, 0
        for it in items:
            s = scores[k:k + len(it.choices)]
            k += len(it.choices)
            correct += max(range(len(s)), key=s.__getitem__) == it.answer
        return correct / len(items)

    return accuracy


def train_synthetic(data: UnlearningData, out: Path, seed: int = 0,
                    config: TrainConfig | None = None, log=None) -> dict:
    """Train the tiny GPT-2 on ``data`` and save it to ``out`` atomically. Returns its stats."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    cfg = config or TrainConfig()
    t0 = time.perf_counter()
    texts = data.forget_texts + data.retain_texts
    tokenizer = _train_tokenizer(texts, cfg.vocab_size)
    eos = tokenizer.eos_token_id
    encoded = [tokenizer(t).input_ids + [eos] for t in texts]

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    config = GPT2Config(vocab_size=len(tokenizer), n_positions=cfg.n_positions, n_embd=cfg.n_embd,
                        n_layer=cfg.n_layer, n_head=cfg.n_head, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos)
    model = GPT2LMHeadModel(config)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    forget_acc = _cloze_scorer(model, tokenizer, data.forget_mcq)
    retain_acc = _cloze_scorer(model, tokenizer, data.retain_mcq)

    order: list[int] = []
    step, reached_at, accs = 0, None, (0.0, 0.0)
    while step < cfg.max_steps:
        if len(order) < cfg.batch_size:
            order += torch.randperm(len(encoded), generator=gen).tolist()
        batch = [encoded[i] for i in order[: cfg.batch_size]]
        del order[: cfg.batch_size]
        width = max(len(b) for b in batch)
        ids = torch.full((len(batch), width), eos, dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for r, b in enumerate(batch):
            ids[r, : len(b)] = torch.tensor(b)
            labels[r, : len(b)] = torch.tensor(b)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * min(1.0, (step + 1) / cfg.warmup)
        loss = model(input_ids=ids, attention_mask=(labels != -100).long(), labels=labels).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        if reached_at is not None and step >= reached_at + cfg.extra_steps:
            break
        if reached_at is None and step % cfg.check_every == 0:
            accs = (forget_acc(), retain_acc())
            if log:
                log(f"step {step}: loss {loss.item():.3f}, forget {accs[0]:.3f}, retain {accs[1]:.3f}, "
                    f"{time.perf_counter() - t0:.1f}s")
            if min(accs) >= cfg.target_acc:
                reached_at = step
    accs = (forget_acc(), retain_acc())
    train_s = time.perf_counter() - t0
    stats = {"version": VERSION, "steps": step, "train_s": round(train_s, 2),
             "final_loss": round(float(loss.item()), 4), "forget_cloze_acc": accs[0],
             "retain_cloze_acc": accs[1], "data_hash": data.content_hash(),
             "data": data.name, "n_params": sum(p.numel() for p in model.parameters()),
             "config": cfg.__dict__, "torch_threads": torch.get_num_threads()}
    model.eval()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        (tmp / "synthetic.json").write_text(json.dumps(stats, indent=1) + "\n")
        for f in [tmp, *tmp.iterdir()]:  # mkdtemp makes 0700: let other users read the cache
            f.chmod(0o755 if f.is_dir() else 0o644)
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").exists():  # another process may have won the race
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _is_complete(folder: Path) -> bool:
    return ((folder / "config.json").exists() and (folder / "synthetic.json").exists()
            and any(folder.glob("*.safetensors")) and (folder / "tokenizer.json").exists())


def synthetic_model_path(entanglement: float = DEFAULT_ENTANGLEMENT, seed: int = 0, log=None) -> Path:
    """The cached tiny model for this world (trained on first use, 15-45 s; deterministic per seed).

    Concurrent callers (parallel test runs) wait on a lock file instead of training twice.
    """
    out = model_dir(entanglement, seed)
    if _is_complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with _lock(out.parent / f".{out.name}.lock"):
        if _is_complete(out):  # trained by another process while we waited
            return out
        if out.exists():  # a broken folder (interrupted by hand): rebuild
            shutil.rmtree(out, ignore_errors=True)
        train_synthetic(make_world(entanglement, seed), out, seed=seed, log=log)
    return out


@contextlib.contextmanager
def _lock(path: Path):
    try:
        import fcntl
    except ImportError:  # Windows: no lock; the atomic rename still keeps the cache consistent
        yield
        return
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def resolve_model_source(source: str) -> str:
    """``synthetic[:E[:SEED]]`` as a model source → the cached tiny model's folder (trained if
    missing); any other source is returned unchanged. Called above the model layer (CLI, session)
    so that model loading stays ignorant of data."""
    if source == "synthetic" or source.startswith("synthetic:"):
        e, seed = parse_spec(source)
        return str(synthetic_model_path(e, seed))
    return source
