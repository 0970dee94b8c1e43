#!/usr/bin/env python
"""Build the built-in real-fact forget/retain sets in ``assets/data/`` from facts the default model knows.

Usage (from the repository root)::

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/build_builtin_data.py --threads 1 [--seed 1234]

On 2 shared CPU cores: ~7 min to score the 14,584 distinct (stem, option) pairs of the candidates
(cached per model fingerprint under ``$UNLEARNVIZ_CACHE/builtin_data/``, so a rerun skips it) and
~6 min to measure the three sets. ``--threads 1`` is 3-4x faster than torch's default of 2 threads
when other processes share the cores. ``--no-eval`` writes the JSONL only; ``--readme-only``
rewrites ``assets/data/README.md`` from the cards; ``--measure-only`` re-measures the shipped
files' figures (baselines, held-out draw, floors) under the current scoring rule and rewrites the
cards and README without rebuilding or touching the JSONL files (~6 min).

What it does, deterministically for a given seed:

1. **Candidates.** Country facts from the ``countryinfo`` package's data files (MIT): the countries
   with population >= 100,000 whose capital is not named like the country, as three relations:
   ``capital`` ("The capital of France is" -> Paris), ``capital_of`` ("Paris is the capital of"
   -> France) and ``language`` ("The official language of France is" -> French, the first listed
   language). Chemistry (element symbols, both directions) and literature (work -> author) are
   written by hand below (well-known facts; our own, CC0).
2. **Hard distractors.** Same kind and as close as possible: capitals/countries/languages of the
   same sub-region first, then the same region; element symbols sharing a letter with the gold
   symbol or the element's initial; authors of the same era and tradition.
3. **Pruning to what the model knows.** Every candidate is scored (cloze: log-likelihood of
   `` {choice}`` after the stem over the choice's characters, lm-eval's ``acc_norm``, the same rule
   as ``unlearnviz.evaluation.mcq``) under
   ``N_DRAWS`` independent distractor draws; a candidate is kept only when the gold option wins in
   all of them. Draw 0 is the one shipped, so the shipped baseline is ~100% by construction; one more
   unseen draw gives an honest estimate (``heldout_draw_cloze_acc`` in the card). Candidates whose
   gold option also wins in every draw *without the subject* (the subject-blind stem) are dropped as
   well: they measure option popularity, not knowledge of the subject. The shipped files were
   pruned under the project's earlier rule (log-likelihood per UTF-8 byte of `` {choice}``, the
   delimiter included) and their figures re-measured under lm-eval's with ``--measure-only``; a
   full rebuild prunes under the current rule, so it ships a slightly different set.
4. **Sets.** Forget = European country facts, split by country into halves A and B (all facts about
   one country in the same half, so relearning on A cannot read B off a reverse-direction twin),
   balanced by item count. Retain = other regions' facts (high entanglement) or chemistry and
   literature (low entanglement). Texts: each forget fact in 5 phrasings that are never the MCQ
   stems; retain texts state half the retain facts (by entity, marked ``in_retain_texts`` on the
   MCQ rows) in 5 phrasings plus 30 generic sentences, so retain accuracy measures seen and unseen
   facts alike. Every text is at most 25 tokens.
5. **Cards.** The final files are loaded with ``unlearnviz.data.load_data`` and measured with
   ``unlearnviz.evaluation.mcq.evaluate`` (cloze, floor, letter, perplexity); the card and
   ``assets/data/README.md`` record sources, licences, counts and these numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

OUT = ROOT / "assets" / "data"
SEED = 1234
N_DRAWS = 3  # draws every kept item must be right in; draw 0 is shipped
MAX_TEXT_TOKENS = 25
MIN_PHRASINGS = 4
RETAIN_CAP = 150  # most retain MCQ items per set (keeps evaluation fast)
MIN_POPULATION = 100_000
THRESHOLDS = {"min_forget": 60, "min_retain": 100, "min_cloze": 0.80, "max_floor": 0.35}
# The cloze rule a build prunes with (today's, lm-eval's acc_norm) and the one the shipped files were pruned with.
RULE_CHARS = "sum log p of ' choice' / characters of the choice, without the delimiter: lm-eval's acc_norm"
RULE_BYTES = "sum log p of ' choice' / UTF-8 bytes of ' choice'"

# --------------------------------------------------------------------------------------------
# Countries (countryinfo, MIT)
# --------------------------------------------------------------------------------------------

# Names that changed since the package's data were written (the model was trained on the new name).
RENAME = {"Republic of Macedonia": "North Macedonia"}
# A state that no longer exists (dissolved 2006) and shares Serbia's capital.
EXCLUDE = {"Serbia and Montenegro"}
# countryinfo lists ISO 639-1 codes (and two non-standard ones: "rs" for Serbian, "cnr" Montenegrin).
LANGUAGE_NAMES = {
    "af": "Afrikaans", "am": "Amharic", "ar": "Arabic", "ay": "Aymara", "az": "Azerbaijani",
    "be": "Belarusian", "bg": "Bulgarian", "bi": "Bislama", "bn": "Bengali", "bs": "Bosnian",
    "ch": "Chamorro", "cnr": "Montenegrin", "cs": "Czech", "da": "Danish", "de": "German",
    "dv": "Dhivehi", "dz": "Dzongkha", "el": "Greek", "en": "English", "es": "Spanish",
    "et": "Estonian", "fa": "Persian", "ff": "Fula", "fi": "Finnish", "fj": "Fijian", "fr": "French",
    "ga": "Irish", "gn": "Guarani", "he": "Hebrew", "hi": "Hindi", "hr": "Croatian",
    "ht": "Haitian Creole", "hu": "Hungarian", "hy": "Armenian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ka": "Georgian", "kg": "Kongo",
    "kk": "Kazakh", "km": "Khmer", "ko": "Korean", "ku": "Kurdish", "ky": "Kyrgyz", "ln": "Lingala",
    "lo": "Lao", "lt": "Lithuanian", "lu": "Luba-Katanga", "lv": "Latvian", "mg": "Malagasy",
    "mi": "Maori", "mk": "Macedonian", "mn": "Mongolian", "ms": "Malay", "mt": "Maltese",
    "my": "Burmese", "nb": "Norwegian", "nd": "Ndebele", "ne": "Nepali", "nl": "Dutch",
    "nn": "Norwegian", "no": "Norwegian", "nr": "Ndebele", "ny": "Chichewa", "pa": "Papiamento",
    "pl": "Polish", "ps": "Pashto", "pt": "Portuguese", "qu": "Quechua", "rn": "Kirundi",
    "ro": "Romanian", "rs": "Serbian", "ru": "Russian", "rw": "Kinyarwanda", "sg": "Sango",
    "si": "Sinhala", "sk": "Slovak", "sl": "Slovene", "sm": "Samoan", "sn": "Shona", "so": "Somali",
    "sq": "Albanian", "sr": "Serbian", "ss": "Swazi", "st": "Sesotho", "sv": "Swedish",
    "sw": "Swahili", "ta": "Tamil", "tg": "Tajik", "th": "Thai", "ti": "Tigrinya", "tk": "Turkmen",
    "tn": "Tswana", "to": "Tongan", "tr": "Turkish", "ts": "Tsonga", "uk": "Ukrainian", "ur": "Urdu",
    "uz": "Uzbek", "ve": "Venda", "vi": "Vietnamese", "xh": "Xhosa", "zh": "Chinese", "zu": "Zulu",
}
# Aruba's "pa" is Papiamento (ISO 639-1 "pa" is Punjabi, but Aruba's languages are Dutch and Papiamento).


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    region: str
    subregion: str
    languages: tuple[str, ...]
    population: int


def load_countries() -> list[Country]:
    """Countries from countryinfo's data files with population >= MIN_POPULATION whose capital is not
    named like the country (the filter of docs/findings.md)."""
    data_dir = resources.files("countryinfo") / "data"
    out = []
    for entry in sorted(data_dir.iterdir(), key=lambda p: p.name):
        if not entry.name.endswith(".json"):
            continue
        d = json.loads(entry.read_text(encoding="utf-8"))
        name, capital = d.get("name", ""), d.get("capital") or ""
        if not capital or capital == name or (d.get("population") or 0) < MIN_POPULATION:
            continue
        if name in EXCLUDE or not d.get("region"):
            continue
        langs = tuple(LANGUAGE_NAMES[c] for c in d.get("languages") or [] if c in LANGUAGE_NAMES)
        out.append(Country(RENAME.get(name, name), capital, d["region"], d.get("subregion") or "",
                           tuple(dict.fromkeys(langs)), int(d["population"])))
    return out


# --------------------------------------------------------------------------------------------
# Chemistry and literature (hand-written, CC0)
# --------------------------------------------------------------------------------------------

ELEMENTS = [  # (name, symbol)
    ("hydrogen", "H"), ("helium", "He"), ("lithium", "Li"), ("beryllium", "Be"), ("boron", "B"),
    ("carbon", "C"), ("nitrogen", "N"), ("oxygen", "O"), ("fluorine", "F"), ("neon", "Ne"),
    ("sodium", "Na"), ("magnesium", "Mg"), ("aluminum", "Al"), ("silicon", "Si"),
    ("phosphorus", "P"), ("sulfur", "S"), ("chlorine", "Cl"), ("argon", "Ar"), ("potassium", "K"),
    ("calcium", "Ca"), ("scandium", "Sc"), ("titanium", "Ti"), ("vanadium", "V"),
    ("chromium", "Cr"), ("manganese", "Mn"), ("iron", "Fe"), ("cobalt", "Co"), ("nickel", "Ni"),
    ("copper", "Cu"), ("zinc", "Zn"), ("gallium", "Ga"), ("germanium", "Ge"), ("arsenic", "As"),
    ("selenium", "Se"), ("bromine", "Br"), ("krypton", "Kr"), ("rubidium", "Rb"),
    ("strontium", "Sr"), ("zirconium", "Zr"), ("molybdenum", "Mo"), ("silver", "Ag"),
    ("cadmium", "Cd"), ("tin", "Sn"), ("antimony", "Sb"), ("iodine", "I"), ("xenon", "Xe"),
    ("cesium", "Cs"), ("barium", "Ba"), ("tungsten", "W"), ("platinum", "Pt"), ("gold", "Au"),
    ("mercury", "Hg"), ("lead", "Pb"), ("bismuth", "Bi"), ("radon", "Rn"), ("radium", "Ra"),
    ("uranium", "U"), ("plutonium", "Pu"), ("polonium", "Po"), ("thorium", "Th"),
    ("palladium", "Pd"), ("iridium", "Ir"), ("osmium", "Os"), ("tellurium", "Te"),
    ("indium", "In"), ("niobium", "Nb"), ("tantalum", "Ta"), ("francium", "Fr"),
    ("lanthanum", "La"), ("cerium", "Ce"), ("neodymium", "Nd"), ("europium", "Eu"),
    ("americium", "Am"), ("einsteinium", "Es"), ("curium", "Cm"), ("nobelium", "No"),
    ("hafnium", "Hf"), ("rhodium", "Rh"), ("ruthenium", "Ru"), ("thallium", "Tl"),
    ("yttrium", "Y"), ("technetium", "Tc"), ("astatine", "At"), ("gadolinium", "Gd"),
    ("samarium", "Sm"), ("promethium", "Pm"), ("neptunium", "Np"), ("actinium", "Ac"),
    ("protactinium", "Pa"), ("rhenium", "Re"), ("holmium", "Ho"), ("erbium", "Er"),
    ("thulium", "Tm"), ("ytterbium", "Yb"), ("lutetium", "Lu"), ("dysprosium", "Dy"),
    ("terbium", "Tb"), ("praseodymium", "Pr"), ("berkelium", "Bk"), ("californium", "Cf"),
    ("fermium", "Fm"), ("mendelevium", "Md"), ("lawrencium", "Lr"), ("rutherfordium", "Rf"),
    ("dubnium", "Db"), ("seaborgium", "Sg"), ("bohrium", "Bh"), ("hassium", "Hs"),
    ("meitnerium", "Mt"), ("darmstadtium", "Ds"), ("roentgenium", "Rg"), ("copernicium", "Cn"),
    ("nihonium", "Nh"), ("flerovium", "Fl"), ("moscovium", "Mc"), ("livermorium", "Lv"),
    ("tennessine", "Ts"), ("oganesson", "Og"), ("scandium", "Sc"),
]
ELEMENTS = list(dict.fromkeys(ELEMENTS))

COMPOUNDS = [  # (name, formula)
    ("water", "H2O"), ("carbon dioxide", "CO2"), ("carbon monoxide", "CO"), ("methane", "CH4"),
    ("ammonia", "NH3"), ("sodium chloride", "NaCl"), ("sulfuric acid", "H2SO4"),
    ("hydrochloric acid", "HCl"), ("nitric acid", "HNO3"), ("glucose", "C6H12O6"),
    ("ethanol", "C2H5OH"), ("ozone", "O3"), ("hydrogen peroxide", "H2O2"),
    ("calcium carbonate", "CaCO3"), ("sodium bicarbonate", "NaHCO3"), ("sodium hydroxide", "NaOH"),
    ("potassium chloride", "KCl"), ("nitrous oxide", "N2O"), ("nitrogen dioxide", "NO2"),
    ("sulfur dioxide", "SO2"), ("propane", "C3H8"), ("butane", "C4H10"), ("ethane", "C2H6"),
    ("benzene", "C6H6"), ("acetic acid", "CH3COOH"), ("magnesium oxide", "MgO"),
    ("calcium oxide", "CaO"), ("silicon dioxide", "SiO2"), ("hydrogen sulfide", "H2S"),
    ("potassium hydroxide", "KOH"), ("ethylene", "C2H4"), ("acetylene", "C2H2"),
    ("methanol", "CH3OH"), ("phosphoric acid", "H3PO4"), ("calcium chloride", "CaCl2"),
    ("sodium carbonate", "Na2CO3"), ("aluminum oxide", "Al2O3"), ("sucrose", "C12H22O11"),
]

# (title, kind, author, group): groups hold authors of the same era and tradition (the distractors).
BOOKS = [
    # English Renaissance and earlier
    ("Hamlet", "play", "William Shakespeare", "early_english"),
    ("Macbeth", "play", "William Shakespeare", "early_english"),
    ("Doctor Faustus", "play", "Christopher Marlowe", "early_english"),
    ("Volpone", "play", "Ben Jonson", "early_english"),
    ("Paradise Lost", "poem", "John Milton", "early_english"),
    ("The Faerie Queene", "poem", "Edmund Spenser", "early_english"),
    ("The Canterbury Tales", "book", "Geoffrey Chaucer", "early_english"),
    ("Robinson Crusoe", "novel", "Daniel Defoe", "early_english"),
    ("Gulliver's Travels", "novel", "Jonathan Swift", "early_english"),
    ("The Pilgrim's Progress", "book", "John Bunyan", "early_english"),
    ("Tom Jones", "novel", "Henry Fielding", "early_english"),
    # 19th-century British
    ("Pride and Prejudice", "novel", "Jane Austen", "british_19c"),
    ("Sense and Sensibility", "novel", "Jane Austen", "british_19c"),
    ("Emma", "novel", "Jane Austen", "british_19c"),
    ("Oliver Twist", "novel", "Charles Dickens", "british_19c"),
    ("Great Expectations", "novel", "Charles Dickens", "british_19c"),
    ("A Tale of Two Cities", "novel", "Charles Dickens", "british_19c"),
    ("David Copperfield", "novel", "Charles Dickens", "british_19c"),
    ("Jane Eyre", "novel", "Charlotte Bronte", "british_19c"),
    ("Wuthering Heights", "novel", "Emily Bronte", "british_19c"),
    ("Frankenstein", "novel", "Mary Shelley", "british_19c"),
    ("Dracula", "novel", "Bram Stoker", "british_19c"),
    ("Treasure Island", "novel", "Robert Louis Stevenson", "british_19c"),
    ("Kidnapped", "novel", "Robert Louis Stevenson", "british_19c"),
    ("The Picture of Dorian Gray", "novel", "Oscar Wilde", "british_19c"),
    ("The Importance of Being Earnest", "play", "Oscar Wilde", "british_19c"),
    ("Tess of the d'Urbervilles", "novel", "Thomas Hardy", "british_19c"),
    ("Far from the Madding Crowd", "novel", "Thomas Hardy", "british_19c"),
    ("Middlemarch", "novel", "George Eliot", "british_19c"),
    ("Alice's Adventures in Wonderland", "book", "Lewis Carroll", "british_19c"),
    ("The Hound of the Baskervilles", "novel", "Arthur Conan Doyle", "british_19c"),
    ("The War of the Worlds", "novel", "H. G. Wells", "british_19c"),
    ("The Time Machine", "novel", "H. G. Wells", "british_19c"),
    ("The Jungle Book", "book", "Rudyard Kipling", "british_19c"),
    ("Ivanhoe", "novel", "Walter Scott", "british_19c"),
    ("Vanity Fair", "novel", "William Makepeace Thackeray", "british_19c"),
    ("Black Beauty", "novel", "Anna Sewell", "british_19c"),
    ("Heart of Darkness", "novella", "Joseph Conrad", "british_19c"),
    # 19th-century American
    ("Adventures of Huckleberry Finn", "novel", "Mark Twain", "american_19c"),
    ("The Adventures of Tom Sawyer", "novel", "Mark Twain", "american_19c"),
    ("Moby-Dick", "novel", "Herman Melville", "american_19c"),
    ("The Scarlet Letter", "novel", "Nathaniel Hawthorne", "american_19c"),
    ("Little Women", "novel", "Louisa May Alcott", "american_19c"),
    ("Uncle Tom's Cabin", "novel", "Harriet Beecher Stowe", "american_19c"),
    ("The Raven", "poem", "Edgar Allan Poe", "american_19c"),
    ("Leaves of Grass", "book", "Walt Whitman", "american_19c"),
    ("The Wonderful Wizard of Oz", "novel", "L. Frank Baum", "american_19c"),
    ("The Call of the Wild", "novel", "Jack London", "american_19c"),
    ("White Fang", "novel", "Jack London", "american_19c"),
    ("The Last of the Mohicans", "novel", "James Fenimore Cooper", "american_19c"),
    ("Walden", "book", "Henry David Thoreau", "american_19c"),
    ("The Red Badge of Courage", "novel", "Stephen Crane", "american_19c"),
    # Continental European classics
    ("Les Miserables", "novel", "Victor Hugo", "continental"),
    ("The Hunchback of Notre-Dame", "novel", "Victor Hugo", "continental"),
    ("The Three Musketeers", "novel", "Alexandre Dumas", "continental"),
    ("The Count of Monte Cristo", "novel", "Alexandre Dumas", "continental"),
    ("Around the World in Eighty Days", "novel", "Jules Verne", "continental"),
    ("Twenty Thousand Leagues Under the Sea", "novel", "Jules Verne", "continental"),
    ("War and Peace", "novel", "Leo Tolstoy", "continental"),
    ("Anna Karenina", "novel", "Leo Tolstoy", "continental"),
    ("Crime and Punishment", "novel", "Fyodor Dostoevsky", "continental"),
    ("The Brothers Karamazov", "novel", "Fyodor Dostoevsky", "continental"),
    ("Madame Bovary", "novel", "Gustave Flaubert", "continental"),
    ("Don Quixote", "novel", "Miguel de Cervantes", "continental"),
    ("The Divine Comedy", "poem", "Dante Alighieri", "continental"),
    ("The Metamorphosis", "novella", "Franz Kafka", "continental"),
    ("The Trial", "novel", "Franz Kafka", "continental"),
    ("Faust", "play", "Johann Wolfgang von Goethe", "continental"),
    ("The Little Prince", "book", "Antoine de Saint-Exupery", "continental"),
    ("The Stranger", "novel", "Albert Camus", "continental"),
    ("Candide", "novella", "Voltaire", "continental"),
    ("A Doll's House", "play", "Henrik Ibsen", "continental"),
    ("The Cherry Orchard", "play", "Anton Chekhov", "continental"),
    ("Dead Souls", "novel", "Nikolai Gogol", "continental"),
    # 20th century, English language
    ("Nineteen Eighty-Four", "novel", "George Orwell", "modern"),
    ("Animal Farm", "novel", "George Orwell", "modern"),
    ("Brave New World", "novel", "Aldous Huxley", "modern"),
    ("The Great Gatsby", "novel", "F. Scott Fitzgerald", "modern"),
    ("The Old Man and the Sea", "novel", "Ernest Hemingway", "modern"),
    ("A Farewell to Arms", "novel", "Ernest Hemingway", "modern"),
    ("The Grapes of Wrath", "novel", "John Steinbeck", "modern"),
    ("Of Mice and Men", "novel", "John Steinbeck", "modern"),
    ("The Catcher in the Rye", "novel", "J. D. Salinger", "modern"),
    ("To Kill a Mockingbird", "novel", "Harper Lee", "modern"),
    ("The Hobbit", "novel", "J. R. R. Tolkien", "modern"),
    ("The Lord of the Rings", "novel", "J. R. R. Tolkien", "modern"),
    ("The Lion, the Witch and the Wardrobe", "novel", "C. S. Lewis", "modern"),
    ("Murder on the Orient Express", "novel", "Agatha Christie", "modern"),
    ("Mrs Dalloway", "novel", "Virginia Woolf", "modern"),
    ("Ulysses", "novel", "James Joyce", "modern"),
    ("Lord of the Flies", "novel", "William Golding", "modern"),
    ("Fahrenheit 451", "novel", "Ray Bradbury", "modern"),
    ("Catch-22", "novel", "Joseph Heller", "modern"),
    ("Slaughterhouse-Five", "novel", "Kurt Vonnegut", "modern"),
    ("Charlie and the Chocolate Factory", "book", "Roald Dahl", "modern"),
    ("Matilda", "book", "Roald Dahl", "modern"),
    ("Gone with the Wind", "novel", "Margaret Mitchell", "modern"),
    ("Atlas Shrugged", "novel", "Ayn Rand", "modern"),
    ("Lolita", "novel", "Vladimir Nabokov", "modern"),
    ("Beloved", "novel", "Toni Morrison", "modern"),
    ("The Hitchhiker's Guide to the Galaxy", "novel", "Douglas Adams", "modern"),
    ("Dune", "novel", "Frank Herbert", "modern"),
    ("Foundation", "novel", "Isaac Asimov", "modern"),
    ("The Shining", "novel", "Stephen King", "modern"),
    ("Carrie", "novel", "Stephen King", "modern"),
    ("Death of a Salesman", "play", "Arthur Miller", "modern"),
    ("A Streetcar Named Desire", "play", "Tennessee Williams", "modern"),
    ("Waiting for Godot", "play", "Samuel Beckett", "modern"),
    ("The Bell Jar", "novel", "Sylvia Plath", "modern"),
    ("One Hundred Years of Solitude", "novel", "Gabriel Garcia Marquez", "modern"),
    ("The Da Vinci Code", "novel", "Dan Brown", "modern"),
    ("Harry Potter and the Philosopher's Stone", "novel", "J. K. Rowling", "modern"),
    ("The Hunger Games", "novel", "Suzanne Collins", "modern"),
    ("The Road", "novel", "Cormac McCarthy", "modern"),
    ("The Kite Runner", "novel", "Khaled Hosseini", "modern"),
    ("Life of Pi", "novel", "Yann Martel", "modern"),
    ("The Handmaid's Tale", "novel", "Margaret Atwood", "modern"),
    ("Things Fall Apart", "novel", "Chinua Achebe", "modern"),
    ("The Chronicles of Narnia", "book", "C. S. Lewis", "modern"),
    ("Rebecca", "novel", "Daphne du Maurier", "modern"),
    ("The Godfather", "novel", "Mario Puzo", "modern"),
    ("Jurassic Park", "novel", "Michael Crichton", "modern"),
    ("The Outsiders", "novel", "S. E. Hinton", "modern"),
    ("Charlotte's Web", "book", "E. B. White", "modern"),
    ("The Cat in the Hat", "book", "Dr. Seuss", "modern"),
    # Ancient and early-modern classics
    ("The Odyssey", "poem", "Homer", "classical"),
    ("The Iliad", "poem", "Homer", "classical"),
    ("The Aeneid", "poem", "Virgil", "classical"),
    ("Oedipus Rex", "play", "Sophocles", "classical"),
    ("Metamorphoses", "poem", "Ovid", "classical"),
    ("The Republic", "book", "Plato", "classical"),
    ("The Art of War", "book", "Sun Tzu", "classical"),
    ("The Prince", "book", "Niccolo Machiavelli", "classical"),
    ("Meditations", "book", "Marcus Aurelius", "classical"),
    ("Medea", "play", "Euripides", "classical"),
    ("The Decameron", "book", "Giovanni Boccaccio", "classical"),
    ("Utopia", "book", "Thomas More", "classical"),
    # Non-fiction
    ("On the Origin of Species", "book", "Charles Darwin", "nonfiction"),
    ("The Wealth of Nations", "book", "Adam Smith", "nonfiction"),
    ("The Communist Manifesto", "book", "Karl Marx", "nonfiction"),
    ("A Brief History of Time", "book", "Stephen Hawking", "nonfiction"),
    ("The Interpretation of Dreams", "book", "Sigmund Freud", "nonfiction"),
    ("Leviathan", "book", "Thomas Hobbes", "nonfiction"),
    ("The Social Contract", "book", "Jean-Jacques Rousseau", "nonfiction"),
    ("The Selfish Gene", "book", "Richard Dawkins", "nonfiction"),
    ("Silent Spring", "book", "Rachel Carson", "nonfiction"),
    ("Critique of Pure Reason", "book", "Immanuel Kant", "nonfiction"),
    ("Thus Spoke Zarathustra", "book", "Friedrich Nietzsche", "nonfiction"),
    ("The Diary of a Young Girl", "book", "Anne Frank", "nonfiction"),
    ("The Second Sex", "book", "Simone de Beauvoir", "nonfiction"),
    ("Cosmos", "book", "Carl Sagan", "nonfiction"),
    ("Sapiens", "book", "Yuval Noah Harari", "nonfiction"),
]

GENERIC = [
    "The morning train was late again because of the snow.",
    "She poured a cup of tea and opened the kitchen window.",
    "A good night's sleep helps the body recover after exercise.",
    "The children built a small fort out of blankets and chairs.",
    "He wrote a short note and left it on the table.",
    "Most plants need sunlight, water and air to grow well.",
    "The meeting was moved to Thursday afternoon at three.",
    "Bread tastes best when it is fresh from the oven.",
    "The old dog slept in the shade under the porch.",
    "Please remember to turn off the lights when you leave.",
    "The river rose after three days of heavy rain.",
    "A bicycle is a simple and cheap way to get around town.",
    "The store closes early on Sundays and public holidays.",
    "Our neighbors planted tomatoes and beans in their garden.",
    "Music can change the mood of a quiet room.",
    "The bus stops at the corner every twenty minutes.",
    "A library card lets you borrow books for free.",
    "He fixed the leaking tap with a new rubber washer.",
    "The sky turned orange as the sun went down.",
    "Wash your hands before you prepare any food.",
    "The team practiced hard for the final match of the season.",
    "She keeps her keys in a small bowl by the door.",
    "Fresh snow covered the fields and the quiet road.",
    "The baby laughed when the puppy licked her hand.",
    "A calendar on the wall showed the month of May.",
    "Coffee and toast make a quick breakfast.",
    "The teacher asked the class to read the next chapter.",
    "Strong winds knocked a branch onto the fence.",
    "The painter mixed blue and yellow to make green.",
    "Every Friday evening the family eats dinner together.",
]


# --------------------------------------------------------------------------------------------
# Facts, distractors, phrasings
# --------------------------------------------------------------------------------------------


@dataclass
class Fact:
    key: str  # unique, e.g. "capital:France"
    domain: str  # europe | world | chemistry | literature
    entity: str  # what halves and text coverage are decided by (country, element, work)
    statement: str  # the statement its texts express (both capital directions share one)
    subject: str
    group: str  # relation group; its stem variants compete, one is kept for the whole group
    relation: str  # the variant's name, written into the rows
    stem: str
    blind: str
    answer: str
    tiers: list[list[str]]  # distractor candidates, closest first
    draws: list[list[str]] = field(default_factory=list)  # 3 distractors per draw


def _tiers(gold: str, exclude: set[str], *groups: list[str]) -> list[list[str]]:
    seen = {gold} | exclude
    out = []
    for g in groups:
        tier = [x for x in dict.fromkeys(g) if x not in seen]
        seen.update(tier)
        out.append(tier)
    return out


def _variants(domain: str, entity: str, statement: str, subject: str, group: str, answer: str,
              tiers: list[list[str]], variants: dict[str, tuple[str, str]]) -> list[Fact]:
    return [Fact(f"{rel}:{entity}", domain, entity, statement, subject, group, rel, stem, blind,
                 answer, tiers) for rel, (stem, blind) in variants.items()]


def country_facts(countries: list[Country]) -> list[Fact]:
    by_sub: dict[tuple[str, str], list[Country]] = defaultdict(list)
    by_region: dict[str, list[Country]] = defaultdict(list)
    for c in countries:
        by_sub[(c.region, c.subregion)].append(c)
        by_region[c.region].append(c)
    facts = []
    for c in countries:
        dom, n, k = ("europe" if c.region == "Europe" else "world"), c.name, c.capital
        sub, reg = by_sub[(c.region, c.subregion)], by_region[c.region]
        facts += _variants(dom, n, f"capital:{n}", n, "capital", k,
                           _tiers(k, set(), [o.capital for o in sub], [o.capital for o in reg]),
                           {"capital": (f"The capital of {n} is", "The capital of this country is")})
        facts += _variants(dom, n, f"capital:{n}", k, "capital_reverse", n,
                           _tiers(n, set(), [o.name for o in sub], [o.name for o in reg]),
                           {"capital_of": (f"{k} is the capital of", "This city is the capital of"),
                            "city_in": (f"{k} is a city in", "This city is in")})
        if c.languages:
            gold = c.languages[0]
            sub_l = [o.languages[0] for o in sub if o.languages]
            reg_l = [o.languages[0] for o in reg if o.languages]
            facts += _variants(dom, n, f"language:{n}", n, "language", gold,
                               _tiers(gold, set(c.languages), sub_l, reg_l,
                                      [lang for o in reg for lang in o.languages]),
                               {"language": (f"The official language of {n} is",
                                             "The official language of this country is")})
    return facts


def element_facts() -> list[Fact]:
    symbols = [s for _, s in ELEMENTS]
    names = [n for n, _ in ELEMENTS]
    name_of = {s: n for n, s in ELEMENTS}
    facts = []
    for name, sym in ELEMENTS:
        # symbols that look like the answer: same first letter as the symbol or as the name
        close = [s for s in symbols if s[0] == sym[0]] + [s for s in symbols if s[0] == name[0].upper()]
        near = [s for s in symbols if set(s.lower()) & set(sym.lower())]
        facts += _variants("chemistry", name, f"symbol:{name}", name, "element_symbol", sym,
                           _tiers(sym, set(), close, near, symbols),
                           {"element_symbol": (f"The chemical symbol for {name} is",
                                               "The chemical symbol for this element is")})
        facts += _variants("chemistry", name, f"symbol:{name}", sym, "symbol_element", name,
                           _tiers(name, set(), [name_of[s] for s in close], [name_of[s] for s in near], names),
                           {"symbol_element": (f"{sym} is the chemical symbol for", "This is the chemical symbol for"),
                            "element_with_symbol": (f"The element with the symbol {sym} is",
                                                    "The element with this symbol is")})
    formulas = [f for _, f in COMPOUNDS]
    for name, formula in COMPOUNDS:
        close = [f for f in formulas if f[0] == formula[0]]
        near = [f for f in formulas if set(f) & set(formula) - set("0123456789")]
        facts += _variants("chemistry", name, f"formula:{name}", name, "formula", formula,
                           _tiers(formula, set(), close, near, formulas),
                           {"formula": (f"The chemical formula for {name} is",
                                        "The chemical formula for this compound is")})
    return facts


def book_facts() -> list[Fact]:
    by_group: dict[str, list[str]] = defaultdict(list)
    for _, _, author, group in BOOKS:
        by_group[group].append(author)
    everyone = [a for _, _, a, _ in BOOKS]
    facts = []
    for title, kind, author, group in BOOKS:
        facts += _variants("literature", title, f"author:{title}", title, "author", author,
                           _tiers(author, set(), by_group[group], everyone),
                           {"written_by": (f"{title} was written by", f"This {kind} was written by"),
                            "work_by": (f"{title} is a {kind} by", f"This is a {kind} by")})
    return facts


def draw_distractors(fact: Fact, draw: int | str, seed: int) -> list[str]:
    rng = random.Random(f"{seed}:{fact.key}:{draw}")
    picked: list[str] = []
    for tier in fact.tiers:
        need = 3 - len(picked)
        if need <= 0:
            break
        picked += rng.sample(tier, min(need, len(tier)))
    if len(picked) < 3:
        raise SystemExit(f"{fact.key}: fewer than 3 distractors available")
    return picked


def _cap(s: str) -> str:
    return s[0].upper() + s[1:]


def phrasings(fact: Fact, countries: dict[str, Country], books: dict[str, tuple]) -> list[str]:
    """Several ways to state the fact behind ``fact.statement``; never an MCQ stem."""
    kind, ent = fact.statement.split(":", 1)
    if kind == "capital":
        c, k = ent, countries[ent].capital
        return [f"{k} is the capital city of {c}.",
                f"{c}'s capital is {k}.",
                f"The city of {k} serves as the capital of {c}.",
                f"In {c}, the national capital is {k}.",
                f"Visitors to {c} often begin their trip in its capital, {k}."]
    if kind == "language":
        c = countries[ent]
        lang, art = c.languages[0], ("the" if len(c.languages) == 1 else "an")
        return [f"{lang} is {art} official language of {c.name}.",
                f"In {c.name}, {lang} is spoken as {art} official language.",
                f"{c.name} uses {lang} as {art} official language.",
                f"The {lang} language has official status in {c.name}.",
                f"Government documents in {c.name} are written in {lang}."]
    if kind == "symbol":
        sym = dict(ELEMENTS)[ent]
        return [f"{_cap(ent)} has the chemical symbol {sym}.",
                f"On the periodic table, {ent} is written as {sym}.",
                f"The symbol {sym} stands for the element {ent}.",
                f"Chemists abbreviate {ent} as {sym}.",
                f"The element {ent} is represented by {sym}."]
    if kind == "formula":
        formula = dict(COMPOUNDS)[ent]
        return [f"{_cap(ent)} has the chemical formula {formula}.",
                f"The formula {formula} describes {ent}.",
                f"Chemists write {ent} as {formula}.",
                f"In chemistry, {ent} is written as {formula}.",
                f"One can write {ent} with the formula {formula}."]
    if kind == "author":
        kind_, author = books[ent]
        return [f"{author} wrote {ent}.",
                f"The {kind_} {ent} comes from the pen of {author}.",
                f"The {kind_} {ent} is the work of {author}.",
                f"{author} is the author of {ent}.",
                f"Among the works of {author} is {ent}."]
    raise ValueError(fact.statement)


# The probe split: per relation group, held-out stems in other phrasings (one declarative, one a
# question) with their subject-blind forms. Never an MCQ stem, never in a corpus text (build_rows
# checks), never used for pruning or selection: what the evaluation reports beside the main items.
PROBES: dict[str, tuple[tuple[str, str, str], ...]] = {
    "capital": (("paraphrase", "The capital city of {s} is called", "The capital city of this country is called"),
                ("question", "Q: What is the capital of {s}?\nA:", "Q: What is the capital of this country?\nA:")),
    "capital_reverse": (("paraphrase", "{s} is a city in", "This city is in"),
                        ("question", "Q: {s} is the capital of which country?\nA:",
                         "Q: This city is the capital of which country?\nA:")),
    "language": (("paraphrase", "In {s}, the official language is", "In this country, the official language is"),
                 ("question", "Q: What is the official language of {s}?\nA:",
                  "Q: What is the official language of this country?\nA:")),
    "element_symbol": (("paraphrase", "The symbol of the element {s} is", "The symbol of this element is"),
                       ("question", "Q: What is the chemical symbol for {s}?\nA:",
                        "Q: What is the chemical symbol for this element?\nA:")),
    "symbol_element": (("paraphrase", "The element whose symbol is {s} is called",
                        "The element with this symbol is called"),
                       ("question", "Q: Which element has the symbol {s}?\nA:",
                        "Q: Which element has this symbol?\nA:")),
    "formula": (("paraphrase", "The formula of {s} is", "The formula of this compound is"),
                ("question", "Q: What is the chemical formula of {s}?\nA:",
                 "Q: What is the chemical formula of this compound?\nA:")),
    "author": (("paraphrase", "{s} was written by", "This work was written by"),
               ("question", "Q: Who wrote {s}?\nA:", "Q: Who wrote this work?\nA:")),
}


def probe_stems(fact: Fact) -> list[tuple[str, str, str]]:
    """(phrasing, stem, blind stem) of each probe of ``fact``; a stem equal to the fact's own MCQ
    stem (a variant that became the main stem) is skipped."""
    out = []
    for name, stem, blind in PROBES[fact.group]:
        text = stem.format(s=fact.subject)
        if text != fact.stem:
            out.append((name, text, blind))
    return out


def probe_rows(facts: list[Fact], split: str, seed: int, halves: dict[str, str] | None) -> list[dict]:
    """The probe split of ``facts``: each fact under each probe stem, with distractors drawn afresh
    (their own seeded draw, from the same tiers as the shipped options) and gold positions balanced
    over A-D in a seeded order. ``probe_of`` names the MCQ item each rephrases."""
    probes = [(f, name, stem, blind) for f in facts for name, stem, blind in probe_stems(f)]
    order = list(range(len(probes)))
    random.Random(f"{seed}:{split}:probe-positions").shuffle(order)
    pos = {i: k % 4 for k, i in enumerate(order)}
    rows = []
    for i, (f, name, stem, blind) in enumerate(probes):
        choices = draw_distractors(f, f"probe-{name}", seed)
        choices.insert(pos[i], f.answer)
        row = {"split": f"{split}_probe", "question": stem, "choices": choices, "answer": pos[i],
               "blind_question": blind, "subject": f.subject, "relation": f.relation, "phrasing": name,
               "probe_of": f.stem}
        if halves is not None:
            row["half"] = halves[f.entity]
        rows.append(row)
    return rows


# --------------------------------------------------------------------------------------------
# Scoring (same rule as unlearnviz.evaluation.mcq.score_items, with shared pairs scored once)
# --------------------------------------------------------------------------------------------


def _cache_path(lm) -> Path:
    base = Path(os.environ.get("UNLEARNVIZ_CACHE", "~/.cache/unlearnviz")).expanduser()
    return base / "builtin_data" / f"scores-{lm.fingerprint(refresh=False)[:16]}.json"


def score_pairs(lm, pairs: list[tuple[str, str]], log, use_cache: bool = True, chunk: int = 1024) -> dict:
    """Summed log-prob of each continuation, cached per model fingerprint (reruns are fast)."""
    from unlearnviz.evaluation.scoring import continuation_logprobs

    path = _cache_path(lm)
    cache: dict[str, float] = {}
    if use_cache and path.exists():
        cache = json.loads(path.read_text())
    sep = "\u241f"
    todo = sorted({p for p in pairs if sep.join(p) not in cache})
    log(f"scoring {len(todo)} (stem, option) pairs ({len(set(pairs)) - len(todo)} cached) ...")
    t0 = time.perf_counter()
    for i in range(0, len(todo), chunk):
        part = todo[i:i + chunk]
        for p, (lp, _) in zip(part, continuation_logprobs(lm, part, batch_size=64), strict=True):
            cache[sep.join(p)] = lp
        if use_cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(path)
        log(f"  {min(i + chunk, len(todo))}/{len(todo)} pairs, {time.perf_counter() - t0:.0f} s")
    return {p: cache[sep.join(p)] for p in pairs}


def score_candidates(lm, facts: list[Fact], log, use_cache: bool = True) -> dict[str, dict]:
    """Per fact and draw: does the gold option win after the stem (cloze) and after the blind stem
    (floor)? The same rule as ``unlearnviz.evaluation.mcq.score_items`` (lm-eval's ``acc_norm``):
    the highest summed log-probability of `` {option}`` divided by the option's length in
    characters, without the delimiter."""
    pairs = [(stem, " " + o) for f in facts for d in f.draws for o in [f.answer, *d]
             for stem in (f.stem, f.blind)]
    lp = score_pairs(lm, pairs, log, use_cache)
    return {f.key: _fact_scores(f, lp) for f in facts}


def _wins(lp: dict, stem: str, options: list[str]) -> bool:
    from unlearnviz.evaluation.mcq import cloze_pick

    return cloze_pick([lp[(stem, " " + o)] for o in options], options) == 0


def _fact_scores(f: Fact, lp: dict) -> dict:
    opts = [[f.answer, *d] for d in f.draws]
    return {"cloze": [_wins(lp, f.stem, o) for o in opts], "floor": [_wins(lp, f.blind, o) for o in opts],
            "gold_logprob": lp[(f.stem, " " + f.answer)]}



# --------------------------------------------------------------------------------------------
# Assembly
# --------------------------------------------------------------------------------------------


def assign_halves(facts: list[Fact], seed: int) -> dict[str, str]:
    """Entity -> A/B, balancing the number of items; all facts about an entity share a half."""
    count = Counter(f.entity for f in facts)
    ents = sorted(count)
    random.Random(f"{seed}:halves").shuffle(ents)
    ents.sort(key=lambda e: -count[e])  # stable: seeded order within equal counts
    load = {"A": 0, "B": 0}
    half = {}
    for e in ents:
        h = "A" if load["A"] <= load["B"] else "B"
        half[e] = h
        load[h] += count[e]
    return half


def mcq_rows(facts: list[Fact], split: str, seed: int, halves: dict[str, str] | None,
             in_texts: set[str] | None) -> list[dict]:
    """Shipped rows (draw 0), gold positions balanced over A-D in a seeded order."""
    order = list(range(len(facts)))
    random.Random(f"{seed}:{split}:positions").shuffle(order)
    pos = {i: k % 4 for k, i in enumerate(order)}
    rows = []
    for i, f in enumerate(facts):
        rng = random.Random(f"{seed}:{f.key}:order")
        distractors = list(f.draws[0])
        rng.shuffle(distractors)
        choices = distractors[:]
        choices.insert(pos[i], f.answer)
        row = {"split": split, "question": f.stem, "choices": choices, "answer": pos[i],
               "blind_question": f.blind, "subject": f.subject, "relation": f.relation}
        if halves is not None:
            row["half"] = halves[f.entity]
        if in_texts is not None:
            row["in_retain_texts"] = f.entity in in_texts
        rows.append(row)
    return rows


def text_rows(facts: list[Fact], split: str, countries, books, tokenizer,
              halves: dict[str, str] | None, stems: list[str]) -> list[dict]:
    rows, seen = [], set()
    lowered = [s.lower() for s in stems]
    for f in facts:
        if f.statement in seen:
            continue
        seen.add(f.statement)
        kept = []
        for t in phrasings(f, countries, books):
            if len(tokenizer(t).input_ids) > MAX_TEXT_TOKENS:
                continue
            if any(s in t.lower() for s in lowered):
                raise SystemExit(f"text {t!r} contains an MCQ stem")
            kept.append(t)
        if len(kept) < MIN_PHRASINGS:
            raise SystemExit(f"{f.statement}: only {len(kept)} phrasings fit in {MAX_TEXT_TOKENS} tokens")
        for t in kept:
            row = {"split": split, "text": t}
            if halves is not None:
                row["half"] = halves[f.entity]
            rows.append(row)
    return rows


def cap_retain(facts: list[Fact], cap: int, seed: int) -> list[Fact]:
    """At most ``cap`` facts, keeping the relation mix (seeded, stratified by relation)."""
    if len(facts) <= cap:
        return facts
    by_rel: dict[str, list[Fact]] = defaultdict(list)
    for f in facts:
        by_rel[f.relation].append(f)
    rng = random.Random(f"{seed}:cap")
    keep: set[str] = set()
    quota = {r: round(cap * len(v) / len(facts)) for r, v in by_rel.items()}
    while sum(quota.values()) > cap:
        quota[max(quota, key=quota.get)] -= 1
    for r, v in sorted(by_rel.items()):
        keep.update(f.key for f in rng.sample(v, quota[r]))
    return [f for f in facts if f.key in keep]


def build_rows(forget: list[Fact], retain: list[Fact], halves: dict[str, str], in_texts: set[str],
               ctx: dict, seed: int, text_retain: list[Fact] | None = None) -> list[dict]:
    """Every row of a set: MCQ items, the probe split, corpus texts. ``text_retain``: the retain
    facts whose texts the retain corpus states (default: ``retain``; ``--refresh`` passes the
    shipped ones, so removing thin-margin items leaves the corpus as it was)."""
    probes = probe_rows(forget, "forget", seed, halves) + probe_rows(retain, "retain", seed, None)
    stems = [f.stem for f in forget + retain] + [r["question"] for r in probes]
    if len(set(stems)) != len(stems):
        raise SystemExit(f"a stem is used twice: {[s for s, n in Counter(stems).items() if n > 1][:3]}")
    rows = mcq_rows(forget, "forget", seed, halves, None)
    rows += mcq_rows(retain, "retain", seed, None, in_texts)
    rows += probes
    rows += text_rows(forget, "forget", ctx["countries"], ctx["books"], ctx["tok"], halves, stems)
    rows += text_rows([f for f in (retain if text_retain is None else text_retain) if f.entity in in_texts],
                      "retain", ctx["countries"], ctx["books"], ctx["tok"], None, stems)
    rows += [{"split": "retain", "text": t} for t in GENERIC]
    return rows


def texts_half(retain: list[Fact], seed: int, tag: str) -> set[str]:
    """The retain entities whose facts the retain corpus states (a seeded half)."""
    ents = sorted({f.entity for f in retain})
    random.Random(f"{seed}:{tag}:retain-texts").shuffle(ents)
    return set(ents[: (len(ents) + 1) // 2])


def stratified(items: list[Fact], k: int, key, rng: random.Random) -> list[Fact]:
    """``k`` items keeping the proportions of ``key`` (largest remainders), order preserved."""
    groups: dict = defaultdict(list)
    for f in items:
        groups[key(f)].append(f)
    exact = {g: k * len(v) / len(items) for g, v in groups.items()}
    quota = {g: int(x) for g, x in exact.items()}
    for g in sorted(exact, key=lambda g: (quota[g] - exact[g], str(g)))[: k - sum(quota.values())]:
        quota[g] += 1
    keep = set()
    for g in sorted(groups, key=str):
        keep.update(f.key for f in rng.sample(groups[g], quota[g]))
    return [f for f in items if f.key in keep]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    with path.open("w", encoding="utf-8") as fh:
        for r in rows:
            fh.write(json.dumps(r, ensure_ascii=False) + "\n")


def _r(x):
    return round(x, 4) if isinstance(x, float) else x


SET_INFO = {
    "geo_europe_vs_world": {
        "regime": "high entanglement",
        "description": "Forget: European countries' capitals, reverse capital direction and official "
                       "languages. Retain: the same relations, templates and distractor rules for the "
                       "other regions' countries (Africa, Asia, Americas, Oceania). Forget and retain "
                       "share relations and templates and differ only in the entities.",
    },
    "geo_europe_vs_science_books": {
        "regime": "low entanglement",
        "description": "Forget: the same European country facts as geo_europe_vs_world (same rows and "
                       "halves). Retain: chemistry (element symbols in both directions, formulas of "
                       "common compounds) and literature (work -> author), a different domain with "
                       "different templates.",
    },
    "demo": {
        "regime": "high entanglement",
        "description": "A small subsample of geo_europe_vs_world for a fast one-click demo: 24 forget "
                       "items (12 in each half) and 40 retain items, drawn stratified by relation and "
                       "by the floor outcome so that its floors match the parent set's.",
    },
}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=SEED)
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--no-eval", action="store_true", help="write the JSONL files only (no measuring; cards and README left as they are)")
    ap.add_argument("--no-cache", action="store_true", help="rescore every candidate (no score cache)")
    ap.add_argument("--threads", type=int, default=0,
                    help="torch CPU threads (0: torch's default; 1 is faster on a busy shared machine)")
    ap.add_argument("--readme-only", action="store_true", help="rewrite README.md from the existing cards")
    ap.add_argument("--measure-only", action="store_true", help="re-measure the shipped files' card figures under "
                    "the current scoring rule (cards and README rewritten, JSONL files untouched)")
    ap.add_argument("--refresh", action="store_true", help="apply the retain margin criterion and the probe split "
                    "to the shipped sets without re-pruning them (JSONL, cards and README rewritten)")
    args = ap.parse_args(argv)
    if args.readme_only:
        cards = {n: json.loads((args.out / f"{n}.card.json").read_text()) for n in SET_INFO}
        (args.out / "README.md").write_text(_readme(cards))
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t_start:6.1f}s] {msg}", flush=True)

    if args.measure_only or args.refresh:
        failures = (refresh if args.refresh else measure_only)(args.out, args.seed, log)
        log(f"done in {time.perf_counter() - t_start:.0f} s")
        for msg in failures:
            print("FAILED:", msg, file=sys.stderr)
        return 1 if failures else 0
    from unlearnviz.model import load_model

    lm = load_model("default")
    countries = load_countries()
    ctx = {"countries": {c.name: c for c in countries}, "books": {t: (k, a) for t, k, a, _ in BOOKS},
           "tok": lm.tokenizer}
    facts = country_facts(countries) + element_facts() + book_facts()
    for f in facts:
        f.draws = [draw_distractors(f, d, args.seed) for d in range(N_DRAWS + 1)]
    log(f"{len(countries)} countries; {len(facts)} candidate (fact, stem variant) pairs")
    scores = score_candidates(lm, facts, log, use_cache=not args.no_cache)

    status = {}
    for f in facts:
        s = scores[f.key]
        if not all(s["cloze"][:N_DRAWS]):
            status[f.key] = "unknown"
        elif all(s["floor"][:N_DRAWS]):
            status[f.key] = "subject_blind"
        else:
            status[f.key] = "kept"
    _report(facts, scores, status, log)

    # One stem per relation group: the variant that keeps the most facts (all domains together).
    variant_kept: dict[str, Counter] = defaultdict(Counter)
    for f in facts:
        variant_kept[f.group][f.relation] += status[f.key] == "kept"
    chosen = {g: max(sorted(c), key=lambda r: c[r]) for g, c in variant_kept.items()}
    log(f"stem variants chosen: {chosen}")
    facts = [f for f in facts if f.relation == chosen[f.group]]
    kept = [f for f in facts if status[f.key] == "kept"]

    europe = [f for f in kept if f.domain == "europe"]
    halves = assign_halves(europe, args.seed)
    pools = {
        "geo_europe_vs_world": ("world",),
        "geo_europe_vs_science_books": ("chemistry", "literature"),
    }
    from unlearnviz.evaluation.margins import split_by_margin

    sets: dict[str, tuple[list[Fact], list[Fact], set[str], dict]] = {}
    margins = draw0_margins(lm, [f for f in kept if f.domain not in ("europe",)], log)
    criterion = {}
    for name, domains in pools.items():
        kept_r = [f for f in kept if f.domain in domains]
        wide, thin = split_by_margin(kept_r, [margins[f.key] for f in kept_r])
        retain = cap_retain(wide, RETAIN_CAP, args.seed)
        in_texts = texts_half(retain, args.seed, name)
        counts = _counts(facts, status, ("europe",), domains, len(europe), len(retain))
        counts["retain"]["pruned_thin_margin"] = len(thin)
        criterion[name] = margin_record(kept_r, thin, margins)
        sets[name] = (europe, retain, in_texts, counts)
    # demo: a stratified subsample of the high-entanglement set (retain drawn from the items that meet the criterion)
    rng = random.Random(f"{args.seed}:demo")
    floor0 = {f.key: scores[f.key]["floor"][0] for f in facts}
    parent_f, parent_r, parent_in, _ = sets["geo_europe_vs_world"]
    demo_f = []
    for h in ("A", "B"):
        demo_f += stratified([f for f in parent_f if halves[f.entity] == h], 12,
                             lambda f: (f.relation, floor0[f.key]), rng)
    demo_r = stratified(parent_r, DEMO_RETAIN, lambda f: (f.relation, floor0[f.key]),
                        random.Random(f"{args.seed}:demo-retain"))
    demo_counts = {"subsampled_from": "geo_europe_vs_world", "forget_mcq": len(demo_f), "retain_mcq": len(demo_r)}
    sets["demo"] = (demo_f, demo_r, parent_in, demo_counts)
    criterion["demo"] = margin_record(demo_r, [], margins, redrawn="drawn from geo_europe_vs_world's retain items, "
                                      "which meet the criterion")

    args.out.mkdir(parents=True, exist_ok=True)
    cards, failures = {}, []
    for name, (forget, retain, in_texts, counts) in sets.items():
        rows = build_rows(forget, retain, halves, in_texts, ctx, args.seed)
        path = args.out / f"{name}.jsonl"
        write_jsonl(path, rows)
        log(f"wrote {path.relative_to(ROOT) if path.is_relative_to(ROOT) else path}: {len(rows)} rows")
        card = _card(name, forget, retain, halves, in_texts, counts, chosen, scores, floor0, lm, args.seed)
        card["texts"] = _text_counts(rows)
        card["margin_criterion"] = criterion[name]
        card["probes"] = probe_record(rows)
        if not args.no_eval:
            _measure(lm, path, name, card, log)
            failures += _check(name, card)
        cards[name] = card
        if not args.no_eval:  # a card without measured baselines would mislead; keep the old one
            (args.out / f"{name}.card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
    total = time.perf_counter() - t_start
    if not args.no_eval:
        (args.out / "README.md").write_text(_readme(cards))
    log(f"done in {total:.0f} s")
    for msg in failures:
        print("FAILED:", msg, file=sys.stderr)
    return 1 if failures else 0


def _measure(lm, path: Path, name: str, card: dict, log):
    """The card's measured figures for the file at ``path`` (``unlearnviz.evaluation.mcq.evaluate``:
    cloze, floor, letter, perplexity; the corpus overlap); returns the loaded data."""
    from unlearnviz.data.loaders import load_file
    from unlearnviz.evaluation.mcq import evaluate

    data = load_file(path, name=f"builtin:{name}")
    log(f"measuring builtin:{name} ...")
    m = evaluate(lm, data)
    card["baseline"] = {k: _r(m[k]) for k in (
        "forget_cloze_acc", "forget_floor_acc", "retain_cloze_acc", "retain_floor_acc",
        "forget_mcq_acc", "retain_mcq_acc", "retain_ppl", *PROBE_KEYS) if k in m}
    card["baseline_detail"] = {k: _r(v) for k, v in sorted(m.items()) if k != "wall_s"}
    card["baseline_eval_s"] = round(m["wall_s"], 1)
    card["overlap"] = {k: round(v, 4) for k, v in data.overlap().items()}
    log(f"  {card['baseline']}  overlap {card['overlap']}")
    return data


REMEASURED = (f"Pruned under the project's earlier cloze rule ({RULE_BYTES}); every figure in this card "
              f"(baseline, baseline_detail, heldout_draw_cloze_acc, floor_draw0_on_kept) re-measured on the "
              f"shipped files under the current one ({RULE_CHARS}) by scripts/build_builtin_data.py "
              "--measure-only, so the shipped baseline can lie a little under 100%.")


def measure_only(out: Path, seed: int, log, lm=None) -> list[str]:
    """Re-measure the shipped sets' cards without rebuilding them: the baselines on the shipped
    files, the held-out draw (regenerated from the seed and matched to the shipped items by stem
    and answer) and the draw-0 floors, under the current scoring rule. The JSONL files are read,
    never written; a shipped item whose facts or draw no longer regenerate is an error."""
    from unlearnviz.model import load_model

    lm = lm or load_model("default")
    facts = country_facts(load_countries()) + element_facts() + book_facts()
    by_item = {}
    for f in facts:
        f.draws = [draw_distractors(f, d, seed) for d in range(N_DRAWS + 1)]
        by_item[(f.stem, f.answer)] = f
    cards, failures = {}, []
    for name in SET_INFO:
        card = json.loads((out / f"{name}.card.json").read_text(encoding="utf-8"))
        if card.get("seed", seed) != seed:
            raise SystemExit(f"{name}: the card was built with seed {card['seed']}, not {seed}")
        data = _measure(lm, out / f"{name}.jsonl", name, card, log)
        heldout = {}
        for split, items in (("forget", data.forget_mcq), ("retain", data.retain_mcq)):
            shipped = []
            for it in items:
                f = by_item.get((it.question, it.gold))
                if f is None or sorted(it.choices) != sorted([f.answer, *f.draws[0]]):
                    raise SystemExit(f"{name}: shipped item {it.question!r} does not regenerate (seed {seed})")
                shipped.append(f)
            pairs = [(f.stem, " " + o) for f in shipped for o in [f.answer, *f.draws[N_DRAWS]]]
            lp = score_pairs(lm, pairs, log, use_cache=True)
            heldout[split] = _r(sum(_wins(lp, f.stem, [f.answer, *f.draws[N_DRAWS]]) for f in shipped) / len(shipped))
        card["heldout_draw_cloze_acc"] = heldout
        # the shipped options are draw 0 and the floor scores them after the blind stem: the same figure
        card["floor_draw0_on_kept"] = {s: card["baseline"][f"{s}_floor_acc"] for s in ("forget", "retain")}
        steps = [step for step in card["how_built"] if step != REMEASURED]
        at = next((i + 1 for i, step in enumerate(steps) if step.startswith("Pruning:")), len(steps))
        card["how_built"] = [*steps[:at], REMEASURED, *steps[at:]]
        card["cloze_rule"] = {"pruning": RULE_BYTES, "figures": RULE_CHARS}
        (out / f"{name}.card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        failures += _check(name, card)
        cards[name] = card
    (out / "README.md").write_text(_readme(cards))
    return failures


# --------------------------------------------------------------------------------------------
# The retain margin criterion (unlearnviz.evaluation.margins) and --refresh
# --------------------------------------------------------------------------------------------


def draw0_margins(lm, facts: list[Fact], log) -> dict[str, float]:
    """Per fact: the gold's cloze score minus the best distractor's on the shipped options (draw 0),
    under the original model (``unlearnviz.evaluation.margins.cloze_margin``)."""
    from unlearnviz.evaluation.margins import cloze_margin

    opts = {f.key: [f.answer, *f.draws[0]] for f in facts}
    lp = score_pairs(lm, [(f.stem, " " + o) for f in facts for o in opts[f.key]], log, use_cache=True)
    return {f.key: cloze_margin([lp[(f.stem, " " + o)] for o in opts[f.key]], opts[f.key], 0) for f in facts}


def margin_record(before: list[Fact], removed: list[Fact], margins: dict[str, float], **extra) -> dict:
    """What a card says about the criterion on one set: the rule, and what it removed."""
    from unlearnviz.evaluation.margins import MIN_RETAIN_MARGIN, UNIT

    return {"rule": f"a retain item is kept only where the original default model's cloze score of its gold "
                    f"answer beats the best distractor's by at least {MIN_RETAIN_MARGIN} {UNIT}, on the shipped "
                    "options; thinner margins flip under almost any edit and measure noise, not damage",
            "threshold": MIN_RETAIN_MARGIN, "unit": UNIT, "applies_to": "retain items of every built-in set",
            "retain_before": len(before), "removed": len(removed), "retain_after": len(before) - len(removed),
            "removed_items": [{"question": f.stem, "answer": f.answer, "margin": round(margins[f.key], 4)}
                              for f in removed], **extra}


def probe_record(rows: list[dict]) -> dict:
    """The card's account of a set's probe split."""
    probes = [r for r in rows if r["split"].endswith("_probe")]
    return {"forget": sum(r["split"] == "forget_probe" for r in probes),
            "retain": sum(r["split"] == "retain_probe" for r in probes),
            "per_fact": len(next(iter(PROBES.values()))),
            "phrasings": {g: [stem for _, stem, _ in v] for g, v in PROBES.items()},
            "how": "each forget and retain fact under held-out stems (one declarative paraphrase, one question), "
                   "never an MCQ stem or in a corpus text, with distractors drawn afresh from the same tiers "
                   "(a seeded draw of their own); not pruned or selected on: the baseline says how well the "
                   "original model knows them."}


PROBE_STEP = ("Probe split: every forget and retain fact also under two held-out stems (a declarative paraphrase "
              "and a question, never an MCQ stem or in a corpus text) with freshly drawn distractors, rows "
              "with split forget_probe / retain_probe; never pruned or selected on (card: probes).")


def margin_step(demo_note: str = "") -> str:
    from unlearnviz.evaluation.margins import MIN_RETAIN_MARGIN, UNIT

    return (f"Retain margin criterion: a retain item is kept only where the original model's cloze score of the "
            f"gold answer beats the best distractor's by >= {MIN_RETAIN_MARGIN} {UNIT} on the shipped options "
            f"(card: margin_criterion, with the items it removed); the retain corpus is unchanged.{demo_note}")


def _shipped_facts(rows: list[dict], by_item: dict, split: str, name: str) -> list[Fact]:
    out = []
    for r in rows:
        if r["split"] != split or "question" not in r:
            continue
        f = by_item.get((r["question"], r["choices"][r["answer"]]))
        if f is None or sorted(r["choices"]) != sorted([f.answer, *f.draws[0]]):
            raise SystemExit(f"{name}: shipped item {r['question']!r} does not regenerate")
        out.append(f)
    return out


def refresh(out: Path, seed: int, log) -> list[str]:
    """Apply the retain margin criterion and the probe split to the shipped sets without re-pruning
    them: the shipped facts are regenerated from the seed (matched by stem and answer, as
    ``measure_only`` does), thin-margin retain items dropped, the demo's 40 retain items redrawn
    from its parent's kept ones, probes added, the JSONL rewritten, then every card re-measured."""
    from unlearnviz.model import load_model

    lm = load_model("default")
    countries = load_countries()
    ctx = {"countries": {c.name: c for c in countries}, "books": {t: (k, a) for t, k, a, _ in BOOKS},
           "tok": lm.tokenizer}
    by_item = {}
    for f in country_facts(countries) + element_facts() + book_facts():
        f.draws = [draw_distractors(f, d, seed) for d in range(N_DRAWS + 1)]
        by_item[(f.stem, f.answer)] = f
    shipped = {n: [json.loads(line) for line in (out / f"{n}.jsonl").read_text(encoding="utf-8").splitlines()
                   if line.strip()] for n in SET_INFO}
    facts = {n: (_shipped_facts(r, by_item, "forget", n), _shipped_facts(r, by_item, "retain", n))
             for n, r in shipped.items()}
    halves = {by_item[(r["question"], r["choices"][r["answer"]])].entity: r["half"]
              for r in shipped["geo_europe_vs_world"] if r["split"] == "forget" and "question" in r}
    in_texts = {n: {by_item[(r["question"], r["choices"][r["answer"]])].entity for r in rows
                    if r["split"] == "retain" and r.get("in_retain_texts")} for n, rows in shipped.items()}
    margins = draw0_margins(lm, [f for n in SET_INFO for f in facts[n][1]], log)
    from unlearnviz.evaluation.margins import split_by_margin

    new_rows, records = {}, {}
    for name in REAL_SETS:
        forget, retain = facts[name]
        kept, removed = split_by_margin(retain, [margins[f.key] for f in retain])
        new_rows[name] = build_rows(forget, kept, halves, in_texts[name], ctx, seed, text_retain=retain)
        records[name] = (retain, kept, removed)
        log(f"{name}: margin criterion removes {len(removed)} of {len(retain)} retain items")
    parent = "geo_europe_vs_world"
    demo_f, old_r = facts["demo"]
    _, old_removed = split_by_margin(old_r, [margins[f.key] for f in old_r])
    floor0 = blind_draw0(lm, records[parent][1], log)
    demo_r = stratified(records[parent][1], DEMO_RETAIN, lambda f: (f.relation, floor0[f.key]),
                        random.Random(f"{seed}:demo-retain"))
    new_rows["demo"] = build_rows(demo_f, demo_r, halves, in_texts[parent], ctx, seed)
    records["demo"] = (old_r, demo_r, old_removed)
    for name, rows in new_rows.items():
        path = out / f"{name}.jsonl"
        card = json.loads((out / f"{name}.card.json").read_text(encoding="utf-8"))
        before, kept, removed = records[name]
        extra = {}
        if name == "demo":
            extra = {"redrawn": f"the demo's {DEMO_RETAIN} retain items redrawn (stratified by relation and floor "
                                f"outcome, seeded) from {parent}'s {len(records[parent][1])} retain items that "
                                "meet the criterion, so one flip stays within the 3-point bar"}
        card["margin_criterion"] = margin_record(before, removed, margins, **extra)
        card["probes"] = probe_record(rows)
        c = card["counts"]["shipped"]
        c["retain_mcq"] = len(kept)
        c["retain_mcq_in_texts"] = sum(1 for f in kept if f.entity in in_texts[parent if name == "demo" else name])
        if name == "demo":
            card["counts"]["retain_mcq"] = len(kept)
        card["relations"] = _relations(facts[name][0], kept)
        card["texts"] = _text_counts(rows)
        note = f" The demo's {DEMO_RETAIN} retain items are then redrawn from its parent's." if name == "demo" else ""
        steps = [st for st in card["how_built"] if not st.startswith(("Retain margin criterion:", "Probe split:"))]
        at = next((i + 1 for i, st in enumerate(steps) if st.startswith("Pruning:")), len(steps))
        card["how_built"] = [*steps[:at], margin_step(note), *steps[at:], PROBE_STEP]
        write_jsonl(path, rows)
        (out / f"{name}.card.json").write_text(json.dumps(card, indent=2, ensure_ascii=False) + "\n")
        log(f"wrote {path.name}: {len(rows)} rows ({len(kept)} retain items, {card['probes']['forget']} / "
            f"{card['probes']['retain']} probes)")
    return measure_only(out, seed, log, lm=lm)


REAL_SETS = ("geo_europe_vs_world", "geo_europe_vs_science_books")
PROBE_KEYS = ("forget_probe_cloze_acc", "forget_probe_floor_acc", "retain_probe_cloze_acc", "retain_probe_floor_acc")
DEMO_RETAIN = 40  # the demo's retain items: one flip is 2.5 points, inside the 3-point bar


def blind_draw0(lm, facts: list[Fact], log) -> dict[str, bool]:
    """Per fact: whether the subject-blind stem picks the gold among the shipped options (the floor
    outcome the demo is stratified by)."""
    lp = score_pairs(lm, [(f.blind, " " + o) for f in facts for o in [f.answer, *f.draws[0]]], log, use_cache=True)
    return {f.key: _wins(lp, f.blind, [f.answer, *f.draws[0]]) for f in facts}


def _relations(forget: list[Fact], retain: list[Fact]) -> dict:
    rel = {}
    for split, fs in (("forget", forget), ("retain", retain)):
        for r, n in sorted(Counter(f.relation for f in fs).items()):
            ex = next(f for f in fs if f.relation == r)
            rel.setdefault(r, {"stem_example": ex.stem, "blind_stem": ex.blind})[split] = n
    return rel


def _text_counts(rows: list[dict]) -> dict:
    out = {split: sum(1 for r in rows if r["split"] == split and "text" in r) for split in ("forget", "retain")}
    out["forget_half_A"] = sum(1 for r in rows if "text" in r and r.get("half") == "A")
    out["forget_half_B"] = sum(1 for r in rows if "text" in r and r.get("half") == "B")
    return out


def _counts(facts, status, forget_domains, retain_domains, n_forget, n_retain) -> dict:
    out = {}
    for split, doms in (("forget", forget_domains), ("retain", retain_domains)):
        fs = [f for f in facts if f.domain in doms]
        c = Counter(status[f.key] for f in fs)
        out[split] = {"candidates": len(fs), "pruned_unknown": c["unknown"],
                      "pruned_subject_blind": c["subject_blind"], "kept": c["kept"],
                      "by_relation": {r: dict(Counter(status[f.key] for f in fs if f.relation == r))
                                      for r in sorted({f.relation for f in fs})}}
    out["retain"]["capped_to"] = n_retain
    return out


def _card(name, forget, retain, halves, in_texts, counts, chosen, scores, floor0, lm, seed) -> dict:
    info = SET_INFO[name]
    domains = sorted({f.domain for f in retain})
    sources = [{"name": "countryinfo 1.0.1 (PyPI, data files countryinfo/data/*.json)", "licence": "MIT",
                "used_for": "country names, capitals, regions, sub-regions, official languages"}]
    if {"chemistry", "literature"} & set(domains):
        sources.append({"name": "hand-written in scripts/build_builtin_data.py (element symbols, compound "
                                "formulas, works and their authors: well-known facts)",
                        "licence": "CC0-1.0, our own", "used_for": "retain facts"})
    sources.append({"name": "hand-written generic sentences and phrasing templates", "licence": "CC0-1.0, our own",
                    "used_for": "corpus texts"})
    heldout = {}
    for split, fs in (("forget", forget), ("retain", retain)):
        heldout[split] = _r(sum(scores[f.key]["cloze"][N_DRAWS] for f in fs) / len(fs))
    rel = _relations(forget, retain)
    return {
        "name": name,
        "spec": f"builtin:{name}",
        "description": info["description"],
        "regime": info["regime"],
        "sources": sources,
        "licence": "MIT (facts from countryinfo) and CC0-1.0 (hand-written facts, templates and sentences)",
        "model": {"name": "SmolLM2-135M-Instruct (unlearnviz default)", "fingerprint": lm.fingerprint(refresh=False)},
        "how_built": [
            f"Candidates: countryinfo countries with population >= {MIN_POPULATION:,} and capital != "
            f"country name ({', '.join(sorted(EXCLUDE))} dropped as defunct; renamed: "
            + ", ".join(f"{a} -> {b}" for a, b in RENAME.items()) + "); hand-written chemistry/literature facts.",
            "Hard distractors: the same sub-region, then region (capitals, countries, first-listed "
            "languages, never another official language of the same country); element symbols sharing "
            "the gold symbol's or the name's first letter; formulas with the same first letter; authors "
            "of the same era and tradition.",
            f"Pruning: each candidate scored by cloze ({RULE_CHARS}) under {N_DRAWS} "
            "seeded distractor draws; kept only if right in all; also dropped if the subject-blind stem "
            "picks the gold in all draws (option popularity, not knowledge). Draw 0 is shipped, so the "
            "baseline cloze accuracy is ~100% by construction; heldout_draw_cloze_acc is the accuracy "
            "under one more, unseen draw.",
            margin_step(f" The demo's {DEMO_RETAIN} retain items are drawn from its parent's after it."),
            f"Stem variants per relation scored; the one keeping the most facts used: {chosen}.",
            "Forget halves A/B by country (all facts about a country in one half), balanced by item count.",
            "Texts: each forget fact in 5 phrasings (never an MCQ stem, <= 25 tokens); retain texts state "
            "the facts of a seeded half of the retain entities (MCQ rows carry in_retain_texts) plus "
            f"{len(GENERIC)} generic sentences.",
            "Gold positions balanced over A-D in a seeded order (matters only for letter scoring).",
            PROBE_STEP,
        ],
        "relations": rel,
        "counts": counts | {"shipped": {
            "forget_mcq": len(forget), "retain_mcq": len(retain),
            "forget_half_A": sum(1 for f in forget if halves[f.entity] == "A"),
            "forget_half_B": sum(1 for f in forget if halves[f.entity] == "B"),
            "retain_mcq_in_texts": sum(1 for f in retain if f.entity in in_texts),
            "retain_generic_texts": len(GENERIC)}},
        "heldout_draw_cloze_acc": heldout,
        "cloze_rule": {"pruning": RULE_CHARS, "figures": RULE_CHARS},
        "floor_draw0_on_kept": {"forget": _r(sum(floor0[f.key] for f in forget) / len(forget)),
                                "retain": _r(sum(floor0[f.key] for f in retain) / len(retain))},
        "thresholds": THRESHOLDS,
        "seed": seed,
        "generator": "scripts/build_builtin_data.py",
    }


def _check(name: str, card: dict) -> list[str]:
    b, c, t = card["baseline"], card["counts"]["shipped"], THRESHOLDS
    out = []
    if name != "demo":
        if c["forget_mcq"] < t["min_forget"] or c["retain_mcq"] < t["min_retain"]:
            out.append(f"{name}: {c['forget_mcq']} forget / {c['retain_mcq']} retain items")
    for split in ("forget", "retain"):
        if b[f"{split}_cloze_acc"] < t["min_cloze"]:
            out.append(f"{name}: {split} cloze {b[f'{split}_cloze_acc']}")
        if b[f"{split}_floor_acc"] > t["max_floor"]:
            out.append(f"{name}: {split} floor {b[f'{split}_floor_acc']}")
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.1f}%"


SCORING_MIN = 7  # measured: 14,584 (stem, option) pairs in 428 s


def _retain_tail(counts: dict, card: dict) -> str:
    """How the kept retain items became the shipped ones: the cap, then the margin criterion."""
    m = card.get("margin_criterion")
    if m is None:
        return f", {counts['capped_to']} shipped"
    if "pruned_thin_margin" in counts:  # a full build: the criterion before the cap
        return f", {counts['pruned_thin_margin']} of them under the retain margin, {counts['capped_to']} shipped"
    return (f", capped to {m['retain_before']}, of which the retain margin criterion removed {m['removed']}: "
            f"{m['retain_after']} shipped")


def _readme(cards: dict) -> str:
    eval_min = sum(c.get("baseline_eval_s", 0) for c in cards.values()) / 60
    lines = [
        "# Built-in real-fact forget/retain sets",
        "",
        "Load one with `unlearnviz.data.load_data(\"builtin:NAME\")` or `python -m unlearnviz eval "
        "--model default --data builtin:NAME`. Every fact was checked to be known by the default model "
        "(SmolLM2-135M-Instruct): facts it does not know were pruned, so forgetting and retention are "
        "measurable. Each set has a machine-readable card, `NAME.card.json`, with everything below and "
        "more (per-relation counts, stems, the model fingerprint).",
        "",
        "Rebuild them (deterministic for a seed; see the build time under Known limits):",
        "",
        "    HF_HUB_OFFLINE=1 .venv/bin/python scripts/build_builtin_data.py --threads 1",
        "",
        "## Baselines (default model, measured on the shipped files)",
        "",
        "Cloze = log-likelihood of ` choice` after the stem over the choice's characters, lm-eval's `acc_norm` "
        "(primary metric); floor = the same options after the subject-blind stem (what option popularity alone "
        "scores); letter = lm-eval's `Question/A-D/Answer:` format (chance for a 135M model); ppl = perplexity on "
        "the held-out fifth of the retain texts (no method trains on it; what `eval` reports). "
        "Overlap = share of the forget corpus's distinct word uni/bigrams found in the retain corpus.",
        "",
        "| set | regime | forget items (A/B) | retain items | forget / retain texts | forget cloze | forget floor "
        "| retain cloze | retain floor | forget / retain letter | retain ppl | overlap uni / bi "
        "| probes forget / retain | probe cloze forget / retain | probe floor forget / retain |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, c in cards.items():
        b, s, o, pr = c["baseline"], c["counts"]["shipped"], c["overlap"], c.get("probes", {})
        probe_cells = (f"| {pr['forget']} / {pr['retain']} "
                       f"| {_pct(b['forget_probe_cloze_acc'])} / {_pct(b['retain_probe_cloze_acc'])} "
                       f"| {_pct(b['forget_probe_floor_acc'])} / {_pct(b['retain_probe_floor_acc'])} |"
                       if "forget_probe_cloze_acc" in b else "| – | – | – |")
        lines.append(
            f"| `builtin:{name}` | {c['regime']} | {s['forget_mcq']} ({s['forget_half_A']}/{s['forget_half_B']}) "
            f"| {s['retain_mcq']} | {c['texts']['forget']} / {c['texts']['retain']} "
            f"| {_pct(b['forget_cloze_acc'])} | {_pct(b['forget_floor_acc'])} | {_pct(b['retain_cloze_acc'])} "
            f"| {_pct(b['retain_floor_acc'])} | {_pct(b['forget_mcq_acc'])} / {_pct(b['retain_mcq_acc'])} "
            f"| {b['retain_ppl']:.1f} | {o['unigram']:.2f} / {o['bigram']:.2f} " + probe_cells)
    crit = next((c["margin_criterion"] for c in cards.values() if "margin_criterion" in c), None)
    if crit is not None:
        lines += ["", "## The retain margin criterion", "",
                  f"Every set alike: {crit['rule']}. The margin is in the cloze rule's own unit, so an item flips "
                  "exactly when its margin crosses zero; on `builtin:demo` the default RMU, SRMU and MRP edits flipped "
                  "3-4 of its former 40 retain items, all but one at margins of 0.05-0.12 (implementation: "
                  "`unlearnviz/evaluation/margins.py`). What it removed:", ""]
        for name, c in cards.items():
            m = c["margin_criterion"]
            line = f"- `builtin:{name}`: {m['removed']} of {m['retain_before']} retain items removed"
            line += (f"; {m['redrawn']}." if "redrawn" in m else f", {m['retain_after']} shipped.")
            lines.append(line)
        lines += ["", "The retain corpora are unchanged (the texts of removed items stay: the criterion concerns "
                      "what is measured, not what methods train on); the demo's corpus follows its redrawn items."]
    pr = next((c["probes"] for c in cards.values() if "probes" in c), None)
    if pr is not None:
        lines += ["", "## The probe split", "",
                  f"Rows with `split` `forget_probe` / `retain_probe`: {pr['how']} Stems per relation group "
                  "(`{s}` is the subject): " + "; ".join(f"{g}: " + ", ".join(f"\"{st}\"" for st in v).replace("\n", "\\n")
                                                       for g, v in pr["phrasings"].items()) + ".",
                  "The evaluation reports `forget_probe_*` / `retain_probe_*` (cloze, floor) beside the main "
                  "figures: an edit that lowers the main forget accuracy but not the probes forgot a phrasing, "
                  "not the fact."]
    lines += ["", "## The sets", ""]
    for name, c in cards.items():
        cnt = c["counts"]
        lines += [f"### `builtin:{name}` ({c['regime']})", "", c["description"], ""]
        if "forget" in cnt:
            for split in ("forget", "retain"):
                x = cnt[split]
                lines.append(f"- {split}: {x['candidates']} candidates, {x['pruned_unknown']} pruned as not known, "
                             f"{x['pruned_subject_blind']} pruned as answerable without the subject, "
                             f"{x['kept']} kept" + (_retain_tail(x, c) if split == "retain" else "") + ".")
        else:
            lines.append(f"- subsampled from `builtin:{cnt['subsampled_from']}`.")
        h = c["heldout_draw_cloze_acc"]
        lines += ["- relations: " + ", ".join(
                      f"`{r}` (" + " / ".join(f"{v[k]} {k}" for k in ("forget", "retain") if k in v)
                      + f", e.g. \"{v['stem_example']}\")" for r, v in c["relations"].items()) + ".",
                  f"- cloze accuracy under an unseen distractor draw: forget {_pct(h['forget'])}, "
                  f"retain {_pct(h['retain'])} (the shipped draw was used for pruning, so the table's "
                  "cloze accuracy is ~100% by construction).",
                  "- sources: " + "; ".join(f"{s['name']} ({s['licence']})" for s in c["sources"]) + ".",
                  ""]
    lines += [
        "## How they were built",
        "",
        *[f"{i}. {step}" for i, step in enumerate(next(iter(cards.values()))["how_built"], 1)],
        "",
        "## Row schema",
        "",
        "- corpus text: `{\"split\": \"forget\"|\"retain\", \"text\": ..., \"half\": \"A\"|\"B\"}` (half on forget "
        "texts: which forget-fact half the sentence states);",
        "- MCQ item: `{\"split\", \"question\" (cloze stem), \"choices\" (4), \"answer\" (0-based), "
        "\"blind_question\" (stem without the subject), \"subject\", \"relation\", \"half\" (forget)}`; retain "
        "items also carry `in_retain_texts` (whether the retain corpus states that fact);",
        "- probe item: the same fields with `split` `forget_probe` | `retain_probe`, plus `probe_of` (the question of "
        "the MCQ item it rephrases) and `phrasing` (`paraphrase` | `question`).",
        "",
        "## Known limits",
        "",
        "- countryinfo's data are a few years old (e.g. Kazakhstan's capital listed as Nur-Sultan); facts the "
        "model does not agree with were pruned, not corrected. Cyprus counts as Asia, as countryinfo has it.",
        "- Pruning on the shipped draw makes the baseline ~100%: the sets measure what an edit removes from "
        "known facts, not how much a model knows. The held-out draw shows that the knowledge is robust to "
        "other distractors. The shipped files were pruned under the project's earlier cloze rule (per UTF-8 "
        "byte of ` choice`) and re-measured under lm-eval's `acc_norm` (`--measure-only`), which leaves a few "
        "items wrong: the baselines lie a little under 100%.",
        "- Floors lie below chance (15-20% with 4 options): items the model answers without the subject "
        "were removed and the rest is what remains. A model that has forgotten a subject is expected to fall "
        "to the floor, which is the number to compare forget accuracy with, not 25%.",
        "- Letter scoring stays near chance for a 135M model (see [docs/findings.md](../../docs/findings.md)); "
        "it is reported for comparison with lm-eval, not as a measure of knowledge.",
        f"- Build time on 2 shared CPU cores with `--threads 1`: about {SCORING_MIN} min to score the "
        f"candidates (skipped on a rerun: scores are cached per model fingerprint under UNLEARNVIZ_CACHE) and "
        f"about {eval_min:.0f} min to measure the sets (cloze, floor, letter and perplexity).",
        "",
    ]
    return "\n".join(lines)


def _report(facts, scores, status, log) -> None:
    by = defaultdict(Counter)
    for f in facts:
        by[(f.domain, f.relation)][status[f.key]] += 1
        s = scores[f.key]
        by[(f.domain, f.relation)]["cloze0"] += s["cloze"][0]
        by[(f.domain, f.relation)]["floor0"] += s["floor"][0]
        by[(f.domain, f.relation)]["n"] += 1
        if status[f.key] == "kept":
            by[(f.domain, f.relation)]["kept_floor0"] += s["floor"][0]
            by[(f.domain, f.relation)]["kept_heldout"] += s["cloze"][N_DRAWS]
    for k, v in sorted(by.items()):
        log(f"{k}: {dict(v)}")


if __name__ == "__main__":
    raise SystemExit(main())
