"""Prompts for sequence-level distillation, built from material on the machine, not written by hand.

The AR model's own answers are the distribution the diffusion model must learn to draft (Kim &
Rush 2016: sequence-level distillation is what made non-autoregressive translation work). What
matters for the prompts is breadth: many topics, many question shapes. Two sources:

- WordNet (Debian's `wordnet-base`, /usr/share/wordnet): every lemma that occurs in WordNet's
  sense-tagged corpus (tagsense_cnt > 0, i.e. a word people actually use), in its most frequent
  sense, turned into a question by a template chosen for its lexicographer file (an animal gets
  "what does it eat", an artifact "how does it work", a verb "how do you ..."). Some prompts carry
  the gloss, so the question names the sense; some compare two sister terms (same hypernym).
- Python package summaries (the `Summary:` line of every installed distribution's METADATA):
  questions about software, the domain of the project's text corpus.

Each record is {"prompt", "source", "split"}: `source` says where the prompt came from (e.g.
"wordnet:noun.animal:dog#1"), `split` is "train" or "held-out" by a hash of the prompt text, so a
prompt is held out whatever else the file holds (`prompt_split`).

Reading the WordNet database files ourselves: the format is four line types (documented in
wndb(5)), and the one PyPI reader (nltk) wants its own download of the same data.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass
from email.parser import HeaderParser
from pathlib import Path

from ruvdllm.errors import RuvdllmError

WORDNET_DIR = Path("/usr/share/wordnet")  # Debian's wordnet-base
HELD_OUT_PERCENT = 2  # of prompts, by hash: ~400 of 20,000 for the quality benchmark (>= 64 needed)
COMMON_WORD = 2  # a lemma tagged at least this often gets a second question of another shape

# The lexicographer files, numbered as in WordNet 3.0's lexnames (fixed by the database format).
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location "
    "noun.motive noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process "
    "noun.quantity noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change "
    "verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation "
    "verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather "
    "adj.ppl"
).split()

# Question shapes per lexicographer file ({a} = "a"/"an" + the word, {w} = the word).
NOUN_TEMPLATES = (
    "What is {a}?",
    "Explain what {a} is in a few sentences.",
    "Describe {a}.",
    "Write a short paragraph about {w}.",
    "Give three facts about {w}.",
)
TEMPLATES_BY_FILE = {
    "noun.animal": (
        "Where does {a} live and what does it eat?",
        "Write a short story about {a}.",
        "Describe what {a} looks like.",
    ),
    "noun.artifact": (
        "How does {a} work?",
        "What is {a} used for?",
        "Write a short story about {a}.",
        "Give two tips for using {a}.",
    ),
    "noun.food": (
        "How is {w} usually prepared?",
        "What does {w} taste like?",
        "Write a simple recipe that uses {w}.",
    ),
    "noun.plant": ("Describe the {w} plant.", "How do you grow {w}?"),
    "noun.person": ("What does {a} do?", "Write a short story about {a}.", "What skills does {a} need?"),
    "noun.location": ("Describe {w}.", "What would you see in {w}?"),
    "noun.body": ("What does the {w} do in the human body?", "How can you keep your {w} healthy?"),
    "noun.phenomenon": ("Explain how {w} happens.", "Why does {w} happen?"),
    "noun.process": ("Explain how {w} works.", "Describe the process of {w}."),
    "noun.event": ("Describe {a}.", "What happens during {a}?"),
    "noun.act": ("Explain what {w} involves.", "Give three tips for {w}."),
    "noun.feeling": (
        "What is {w}, and how can someone recognise it?",
        "Give two tips for dealing with {w}.",
        "Write a short poem about {w}.",
    ),
    "noun.state": ("What is {w}?", "What can cause {w}?"),
    "noun.attribute": ("Explain what {w} means.", "Why does {w} matter?"),
    "noun.cognition": ("Explain the idea of {w}.", "Why is {w} useful?"),
    "noun.communication": ("Explain what {a} is.", "Write a short example of {a}."),
    "noun.substance": ("What is {w} made of?", "What is {w} used for?"),
    "noun.time": ("What happens during {w}?", "Describe {w}."),
    "noun.object": ("Describe {a}.", "How is {a} formed?"),
    "noun.group": ("What is {a}?", "How does {a} work?"),
    "noun.possession": ("Explain what {a} is.", "Give two tips about {w}."),
}
VERB_TEMPLATES = (
    "How do you {w}?",
    "What does it mean to {w}?",
    "Give three tips for learning to {w}.",
    "Write a short story about someone who had to {w}.",
    "Why do people {w}?",
)
ADJ_TEMPLATES = (
    "Describe something that is {w}.",
    "What makes something {w}?",
    "Write a short poem about something {w}.",
    "Give an example of something {w} and explain why.",
)
GLOSS_TEMPLATE = "Explain the meaning of '{w}' ({gloss})."
COMPARE_TEMPLATE = "What is the difference between {a} and {b}?"
PACKAGE_TEMPLATES = (
    "What is the Python package {name} used for? Its summary says: {summary}",
    "Explain in simple words what this software does: {summary}",
)


@dataclass(frozen=True)
class Synset:
    offset: int
    lexname: str
    words: tuple[str, ...]
    gloss: str
    hypernyms: tuple[int, ...]


def prompt_split(prompt: str) -> str:
    """ "held-out" for HELD_OUT_PERCENT of prompts, by the prompt's own hash (stable across files)."""
    bucket = int.from_bytes(hashlib.sha256(prompt.encode("utf-8")).digest()[:4], "big") % 100
    return "held-out" if bucket < HELD_OUT_PERCENT else "train"


def parse_data_line(line: str) -> Synset | None:
    """One line of a data.{noun,verb,adj,adv} file (wndb(5)); None for the licence header."""
    if line.startswith(" ") or "|" not in line:
        return None
    head, gloss = line.split("|", 1)
    fields = head.split()
    offset, lexfile, word_count = int(fields[0]), int(fields[1]), int(fields[3], 16)
    words = tuple(fields[4 + 2 * i].replace("_", " ") for i in range(word_count))
    pointers_at = 4 + 2 * word_count
    pointer_count = int(fields[pointers_at])
    hypernyms = tuple(
        int(fields[pointers_at + 1 + 4 * i + 1])
        for i in range(pointer_count)
        if fields[pointers_at + 1 + 4 * i] in ("@", "@i")
    )
    # The gloss is a definition, then "; "-separated quoted examples: keep the definition.
    definition = gloss.strip().split('; "')[0].strip().rstrip(";").strip()
    return Synset(offset, LEXNAMES[lexfile], words, definition, hypernyms)


def read_synsets(path: Path) -> dict[int, Synset]:
    synsets = {}
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            synset = parse_data_line(line)
            if synset is not None:
                synsets[synset.offset] = synset
    return synsets


def tagged_lemmas(path: Path) -> Iterator[tuple[str, int, int]]:
    """(lemma, offset of its most frequent sense, tagsense_cnt) for every lemma of an index.* file
    that occurs in the sense-tagged corpus (tagsense_cnt > 0)."""
    with open(path, encoding="utf-8", errors="replace") as handle:
        for line in handle:
            if line.startswith(" "):
                continue
            fields = line.split()
            pointer_count = int(fields[3])
            tagsense_count = int(fields[5 + pointer_count])
            if tagsense_count > 0:
                yield fields[0], int(fields[6 + pointer_count]), tagsense_count


def with_article(word: str) -> str:
    if word[:1].isupper():  # a name: "Paris", "the Nile" stay as they are
        return word
    return ("an " if word[0].lower() in "aeiou" else "a ") + word


def _usable(word: str) -> bool:
    return 2 < len(word) <= 30 and re.fullmatch(r"[A-Za-z][A-Za-z' -]*", word) is not None


def wordnet_prompts(wordnet_dir: Path, rng: random.Random, gloss_share: float = 0.2) -> list[dict]:
    """Prompts from every tagged noun, verb and adjective lemma (see the module docstring)."""
    wordnet_dir = Path(wordnet_dir)
    if not (wordnet_dir / "data.noun").is_file():
        raise RuvdllmError(f"{wordnet_dir}: no WordNet database here (Debian: apt install wordnet-base)")
    records: list[dict] = []
    for pos, templates in (("noun", None), ("verb", VERB_TEMPLATES), ("adj", ADJ_TEMPLATES)):
        synsets = read_synsets(wordnet_dir / f"data.{pos}")
        children: dict[int, list[int]] = {}
        for synset in synsets.values():
            for parent in synset.hypernyms:
                children.setdefault(parent, []).append(synset.offset)
        seen: set[int] = set()
        for lemma, offset, tagged in tagged_lemmas(wordnet_dir / f"index.{pos}"):
            synset = synsets.get(offset)
            if synset is None or offset in seen:
                continue
            seen.add(offset)
            word = next((w for w in synset.words if w.lower() == lemma.replace("_", " ")), synset.words[0])
            if not _usable(word):
                continue
            source = f"wordnet:{synset.lexname}:{lemma}#1"
            if rng.random() < gloss_share:
                prompt = GLOSS_TEMPLATE.format(w=word, gloss=synset.gloss)
            elif pos == "noun" and synset.hypernyms and rng.random() < 0.15:
                sisters = [
                    synsets[o] for o in children.get(synset.hypernyms[0], []) if o != offset and o in synsets
                ]
                sister = next(
                    (w for s in rng.sample(sisters, len(sisters)) for w in s.words[:1] if _usable(w)), None
                )
                if sister is None:
                    continue
                prompt = COMPARE_TEMPLATE.format(a=with_article(word), b=with_article(sister))
            else:
                shapes = templates or TEMPLATES_BY_FILE.get(synset.lexname, NOUN_TEMPLATES)
                prompt = rng.choice(shapes).format(a=with_article(word), w=word)
            records.append({"prompt": prompt, "source": source})
            if tagged >= COMMON_WORD:  # a common word: one more question, of another shape
                shapes = templates or (*TEMPLATES_BY_FILE.get(synset.lexname, ()), *NOUN_TEMPLATES)
                other = rng.choice([s.format(a=with_article(word), w=word) for s in shapes])
                if other != prompt:
                    records.append({"prompt": other, "source": source})
    return records


def package_prompts(site_packages: Path, rng: random.Random) -> list[dict]:
    """A question about every installed distribution with a one-line `Summary:`."""
    records = []
    for metadata in sorted(Path(site_packages).glob("*.dist-info/METADATA")):
        headers = HeaderParser().parsestr(
            metadata.read_text(encoding="utf-8", errors="replace"), headersonly=True
        )
        name, summary = headers.get("Name"), (headers.get("Summary") or "").strip()
        if not name or len(summary) < 20 or "\n" in summary:
            continue
        prompt = rng.choice(PACKAGE_TEMPLATES).format(name=name, summary=summary.rstrip(".") + ".")
        records.append({"prompt": prompt, "source": f"package:{metadata.parent.name}"})
    return records


def build_prompts(wordnet_dir: Path, site_packages: Path | None, seed: int = 0) -> list[dict]:
    """Every prompt once (first source wins), shuffled by `seed`, each with its split."""
    rng = random.Random(seed)
    records = wordnet_prompts(wordnet_dir, rng)
    if site_packages is not None:
        records += package_prompts(site_packages, rng)
    unique = list({r["prompt"]: r for r in records}.values())
    rng.shuffle(unique)
    return [{**r, "split": prompt_split(r["prompt"])} for r in unique]
