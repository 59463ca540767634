"""The screen's scoring model: hand features over a normalised text, weighed by a linear model.

Features are (1) the rules of `screen_rules` that match, (2) concepts a poisoned text combines (an
instruction addressed to the model, sensitive data, a way out, concealment from the user, an override of
earlier instructions, authority framing, references to other tools, deception, an enabler for injected
text, acting without confirmation, instructions about "your answer"), found through the text's word set
and a few anchored phrases, and (3) every pair of concepts present. The weights (`screen_weights.json`,
one set per kind) are a logistic regression fitted on the *train* split of `bench/screen_corpus` only
(`python -m bench.screen_fit`), and so is each kind's threshold (the lowest score keeping the train
false-positive rate at or under `target_fpr`). At run time scoring is a sum of the weights of the
features present: no NumPy, no model file beyond the JSON.

Normalisation before scoring: NFKC (fullwidth letters), common Cyrillic/Greek homoglyphs, zero-width
characters and no-break spaces, letters spelled out with hyphens or dots ("i-g-n-o-r-e"),
percent-encoded and base64 spans that decode to text; a text that needed any of it gets the feature
`obfuscated`, and the decoded spans are scored with it.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import unicodedata
from importlib import resources
from itertools import combinations
from typing import Literal
from urllib.parse import unquote

Kind = Literal["description", "result"]

# concept -> (words: runs of a-z, phrases: substrings checked only when their first word is present)
_CONCEPTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "actor": ("assistant|assistants|ai|llm|llms|agent|agents|model|bot|claude|gpt|chatbot",
              ("language model", "the model", "you are", "you must", "you should", "your task")),
    "sensitive": ("password|passwords|credential|credentials|secret|secrets|token|tokens|cookie|cookies|ssn|"
                  "passport|cvv|iban|keychain|wallet|netrc|pem|apikey|otp|mnemonic",
                  ("api key", "api keys", "private key", "card number", "card details", "credit card",
                   "social security", "date of birth", "home address", "location history", "bank login",
                   "system prompt", "hidden instructions", "environment variables", "conversation history",
                   "chat history", "chat log", "message history", "the conversation", "whole conversation",
                   "entire conversation", "full conversation", "all messages", "user's messages",
                   "saved logins", "contacts", "inbox", "id_rsa", "session token", "session cookie", "access token",
                   "deploy keys", "ssh key", "~/.", ".env")),
    "egress": ("send|sends|sent|forward|forwards|upload|uploads|post|posts|share|shares|sync|syncs|mirror|"
               "mirrored|transmit|stream|streamed|exfiltrate|leak|bcc|cc|email|submit|attach|append|report|"
               "harvest|harvested|collect|collects|log|logs|logged|shared",
               ("pass it", "pass them", "pass the", "pass its", "pass every", "include it", "include the",
                "include any", "include all", "include every", "put the", "paste", "in the '", "as '",
                "parameter", "argument", "field", "copy of", "copy to", "a copy")),
    "external": ("http|https|ftp|remote|external|partner|partners|third|webhook|endpoint|server|servers|"
                 "cloud|attacker|remotely|externally|example",
                 ("@", "our server", "third party", "third-party", "research team", "analytics")),
    "conceal": ("silently|secretly|covertly|quietly|confidential|hidden|hide|unnoticed|discreetly|invisible",
                ("not tell", "not mention", "not inform", "not reveal", "not let", "n't tell", "n't mention",
                 "never tell", "never mention", "without telling", "without informing", "without mentioning",
                 "no need to tell", "no need to mention", "internal detail", "not be informed",
                 "from the user", "between us", "do not disclose", "not notify", "not alert")),
    "override": ("ignore|disregard|forget|override|bypass|discard|supersede|supersedes|outdated|obsolete",
                 ("previous instructions", "prior instructions", "earlier instructions", "no longer applies",
                  "from now on", "you are now", "developer mode", "maintenance mode", "no restrictions",
                  "instead of your", "were told", "received before", "new instructions", "real instructions",
                  "actual task", "new task", "your instructions", "safety polic", "system prompt")),
    "authority": ("important|critical|mandatory|urgent|required|system|admin|override|notice|priority",
                  ("<", "[", "###", "!!!", "note to", "note for", "message for", "attention", "p.s.")),
    "toolref": ("tool|tools|deprecated|official|trusted|malware|prefer|preferred",
                ("other tool", "any other", "instead of", "only trusted", "this tool", "_")),
    "deceive": ("pretend|lie|fabricated|false|fake|whatever",
                ("say that", "say it", "tell the user that", "tell the user it", "report to the user",
                 "if the user asks", "even if", "always tell", "claim that")),
    "enabler": ("authoritative|obey|commands",
                ("follow any", "follow the instructions", "instructions it contains", "instructions addressed",
                 "carry them out", "as if the user", "treat text", "treat the", "must be followed",
                 "execute every", "run any")),
    "noconfirm": ("unconfirmed|automatically|preapproved|authorised|authorized|approved",
                  ("without asking", "without confirmation", "not ask", "already confirmed", "no confirmation",
                   "pre-approved", "without user", "without the user")),
    "reply": ("reply|response|answer|answers|responses",
              ("your reply", "your response", "your answer", "in your", "to your", "each answer", "every answer")),
}


# words too common to anchor a phrase on: a phrase is looked for only when its longest other word occurs
_STOP = frozenset((
    "a", "an", "the", "in", "to", "as", "of", "is", "it", "be", "and", "or", "for", "with", "from",
    "not", "all", "any", "this", "that", "you", "your", "user", "p", "s"
))

# ordinary in tool results (JSON keys, log lines): anchor on another word of the phrase when it has one
_COMMON = frozenset((
    "login", "logins", "state", "number", "details", "address", "message", "messages", "field",
    "access", "server", "session", "history", "data", "run", "report", "note", "keys", "copy",
    "include", "pass", "put"
))


def _compile() -> tuple[dict[str, frozenset[str]], dict[str, list[tuple[str, str]]], list[tuple[str, str]]]:
    """word -> concepts; anchor word -> [(phrase, concept)]; phrases without an anchor word (always checked)."""
    by_word: dict[str, set[str]] = {}
    anchored: dict[str, list[tuple[str, str]]] = {}
    loose: list[tuple[str, str]] = []
    for name, (words, phrases) in _CONCEPTS.items():
        for w in words.split("|"):
            by_word.setdefault(w, set()).add(name)
        for p in phrases:
            rare = [w for w in re.findall(r"[a-z]+", p) if w not in _STOP]
            if not rare:
                loose.append((p, name))
            else:
                anchored.setdefault(max(rare, key=lambda w: (w not in _COMMON, len(w))), []).append((p, name))
    return {w: frozenset(c) for w, c in by_word.items()}, anchored, loose


CONCEPT_WORDS, ANCHORED, LOOSE = _compile()
_VOCAB = frozenset(CONCEPT_WORDS) | frozenset(ANCHORED)
ORDER = {name: i for i, name in enumerate(_CONCEPTS)}
_WORD = re.compile(r"[a-z]+")
_LOOSE = re.compile("|".join(re.escape(p) for p in sorted({p for p, _ in LOOSE}, key=len, reverse=True)))
VOCAB = _VOCAB  # every word a concept (or a concept phrase's anchor) needs: the screen's fast path reads it

# --- normalisation -------------------------------------------------------------------------------------
# Cyrillic and Greek letters that look like Latin ones (written as escapes: the source stays ASCII)
_LOOKALIKE = ("\u0430\u0435\u043e\u0440\u0441\u0445\u0443\u0456\u0458\u0455\u0501\u0261\u04bb\u04cf\u0410\u0412"
              "\u0415\u0406\u041a\u041c\u041d\u041e\u0420\u0421\u0422\u0425\u04ae\u03b1\u03bf\u03b5\u03b9\u03bd"
              "\u03c1\u03c4\u03c5\u0399\u039f")
_HOMOGLYPHS: dict[int, int | str | None] = {
    **str.maketrans(_LOOKALIKE, "aeopcxyijsdghlABEIKMHOPCTXYaoeivptuIO", "\u200b\u200c\u200d\u2060\ufeff\u00ad"),
    0xA0: " ", 0x2007: " ", 0x202F: " "}  # no-break spaces
_SPELLED = re.compile(r"\b(?:[a-z][-.\u00b7_ ]){3,}[a-z]\b")
BASE64 = re.compile(r"[A-Za-z0-9+/]{20,}={0,2}")
MAX_DECODED_SPAN = 4096  # characters of one base64 span worth decoding
MAX_DECODED_SPANS = 16  # decoded spans per text
_WRAPPED = re.compile(r"(?<=[a-z,])\n(?=[a-z(])")
_PERCENT = re.compile(r"(?:%[0-9a-fA-F]{2}){3,}")


def prepared(text: str) -> tuple[str, set[str], bool]:
    """(normalised lowercase text, its words, whether normalising changed anything) for scoring.

    The cheap checks come first: most texts are ASCII with no long base64-looking run, no '%XX', no run
    of single letters; for them this is one `lower()`, one `findall` and one short regex search.
    """
    out = text
    if not text.isascii():
        out = unicodedata.normalize("NFKC", text).translate(_HOMOGLYPHS)
    low = out.lower()
    words = set(_WORD.findall(low))
    extra: list[str] = []
    if "%" in out:
        extra.extend(unquote(m.group(0)) for m in _PERCENT.finditer(out))
    if len(out) >= 20:
        for m in BASE64.finditer(out):
            span = m.group(0)
            if len(span) > MAX_DECODED_SPAN:  # an image or a key, not a sentence for the model
                continue
            if len(extra) >= MAX_DECODED_SPANS:
                break
            try:
                decoded = base64.b64decode(span + "=" * (-len(span) % 4), validate=True).decode("ascii")
            except (binascii.Error, UnicodeDecodeError, ValueError):
                continue
            if decoded.isprintable() and sum(c.isalpha() or c == " " for c in decoded) > 0.8 * len(decoded):
                extra.append(decoded)
    changed = out != text or bool(extra)
    if "\n" in low:  # a sentence wrapped over lines is one sentence
        low = _WRAPPED.sub(" ", low)
    if sum(len(w) == 1 for w in words) >= 5 and _SPELLED.search(low) is not None:  # "i-g-n-o-r-e"
        low = _SPELLED.sub(lambda m: re.sub(r"[-.\u00b7_ ]", "", m.group(0)), low)
        changed = True
    if extra:
        low = low + "\n" + "\n".join(extra).lower()
    if changed:
        words = set(_WORD.findall(low))
    return low, words, changed


def concepts(low: str, words: set[str]) -> list[str]:
    """The concepts present in `low` (whose word set is `words`), in a fixed order."""
    found: set[str] = set()
    for w in words & _VOCAB:
        hit = CONCEPT_WORDS.get(w)
        if hit is not None:
            found |= hit
        for phrase, name in ANCHORED.get(w, ()):
            if name not in found and phrase in low:
                found.add(name)
    if _LOOSE.search(low) is not None:
        for phrase, name in LOOSE:
            if name not in found and phrase in low:
                found.add(name)
    return sorted(found, key=ORDER.__getitem__)


_SENTENCE = re.compile(r"[.!?;:\n]+(?:\s+|$)|\n")


def features(low: str, words: set[str], rule_hits: list[str], obfuscated: bool) -> list[str]:
    """Rule hits, the concepts of the whole text, and each pair of concepts found in one sentence."""
    present = concepts(low, words)
    if not present and not rule_hits and not obfuscated:
        return []
    out = [f"rule:{h}" for h in rule_hits]
    if len(present) >= 2:
        pairs: set[str] = set()
        for sentence in _SENTENCE.split(low):
            if len(sentence) > 12:
                found = concepts(sentence, set(_WORD.findall(sentence)))
                pairs.update(f"{a}+{b}" for a, b in combinations(found, 2))
        out += sorted(pairs)
    if obfuscated:
        out.append("obfuscated")
    return out


class Model:
    """Weights per kind: feature -> weight, a bias and a threshold on the sum."""

    def __init__(self, data: dict[str, dict[str, object]]) -> None:
        self.weights: dict[str, dict[str, float]] = {}
        self.bias: dict[str, float] = {}
        self.threshold: dict[str, float] = {}
        for kind, part in data.items():
            w = part.get("weights")
            self.weights[kind] = {str(k): float(v) for k, v in w.items()} if isinstance(w, dict) else {}
            self.bias[kind] = float(part.get("bias", 0.0))  # type: ignore[arg-type]
            self.threshold[kind] = float(part.get("threshold", 0.0))  # type: ignore[arg-type]

    def score(self, kind: str, feats: list[str]) -> tuple[float, list[str]]:
        """The margin over the kind's threshold (a hit at >= 0) and the features that pushed it up."""
        w = self.weights.get(kind)
        if w is None:  # no weights for this kind: the model has no opinion
            return -math.inf, []
        total = self.bias.get(kind, 0.0)
        up = []
        for f in feats:
            v = w.get(f, 0.0)
            total += v
            if v > 0:
                up.append(f)
        return total - self.threshold.get(kind, 0.0), up


def load_model() -> Model | None:
    try:
        raw = resources.files("stile.policies").joinpath("screen_weights.json").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return Model(json.loads(raw))
