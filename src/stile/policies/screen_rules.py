"""The built-in screen: scores a text (a tool description, a tool result) for injected instructions.

Rules are regular expressions over the lowercased text, each with a weight; a text whose summed weight
reaches 1.0 is a hit. Strong signals weigh 1.0 alone (hidden-instruction phrasing, `<IMPORTANT>` blocks,
secrecy towards the user, sensitive files, invisible Unicode, hidden image links carrying data, "before
using this tool, call ..."); weak ones only count together (an e-mail address, a URL, "send ... to",
coercion such as "otherwise the tool will not work", imperative shouting). Descriptions and results have
their own weights: a URL or an address in a result is ordinary, an exfiltration target in a description
is not.

Cost: a clean short ASCII result takes one `isascii()` and one pre-filter regex (no rule runs unless
one of its anchor words appears), see `bench/screen_bench.py`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

Kind = Literal["description", "result"]
THRESHOLD = 1.0


@dataclass(frozen=True, slots=True)
class Rule:
    name: str
    words: frozenset[str]  # the pattern cannot match unless one of these words (runs of a-z) occurs...
    marks: tuple[str, ...]  # ...or one of these substrings
    pattern: re.Pattern[str]
    description: float  # weight when screening a tool/prompt description
    result: float  # weight when screening a tool result


def _r(name: str, triggers: str, regex: str, description: float, result: float) -> Rule:
    """`triggers`: `|`-separated words (whole runs of a-z) and marks (anything else, matched as substrings)."""
    parts = triggers.split("|")
    words = frozenset(p for p in parts if p.isalpha())
    marks = tuple(p for p in parts if not p.isalpha())
    return Rule(name, words, marks, re.compile(regex, re.DOTALL), description, result)


_VERBS = "send|forward|post|upload|transmit|exfiltrate|leak|copy|bcc|cc|email|e-mail|mail|report"
RULES: tuple[Rule, ...] = (
    # --- hidden-instruction phrasing --------------------------------------------------------------
    _r("override", "ignore|disregard|forget|override|bypass",
       r"\b(?:ignore|disregard|forget|override|bypass)\b(?:\s+\w+){0,3}?\s+"
       r"(?:previous|prior|above|earlier|preceding|all|any|other|your|the|system|safety)\s+"
       r"(?:\w+\s+){0,2}?(?:instructions?|prompts?|rules?|guidelines?|directions?|messages?|context|policies|"
       r"restrictions?)", 1.0, 1.0),
    _r("new_instructions", "instruction|instructions|directive|directives|task|tasks|objective|objectives",
       r"\b(?:new|updated|real|actual|true|hidden|secret)\s+(?:system\s+)?"
       r"(?:instructions?|directives?|task|objective)s?\s*(?::|are|is)", 1.0, 1.0),
    _r("role_tag", "<|[|system",
       r"<\s*/?\s*(?:important|system|instructions?|secret|hidden|admin|priority|critical|note_to_ai|"
       r"assistant)\b[^>]*>|\[\s*(?:system|inst|important)\s*\]|<\|im_start\|>|\bsystem\s*(?:prompt|override)\s*:",
       1.0, 1.0),
    _r("address_model", "dear|attention|note|ai|llm|now",
       r"\b(?:(?:dear|attention|note\s+(?:to|for))\s+(?:ai|llm|assistant|model|agent|claude|gpt)\b|"
       r"(?:ai|llm)\s+(?:assistant|agent|model)s?\s*(?:must|should|:)|as\s+an\s+ai\b|you\s+are\s+now\b)", 1.0, 1.0),
    _r("role_prefix", "assistant|agent|ai|llm|bot",
       r"(?:^|\n|#|//|\*)\s*(?:ai|assistant|agent|llm|bot)\s*:", 0.6, 0.6),
    _r("secrecy", "n't|dont|not|never|without|keep|remain|silently|secretly|covertly|quietly",
       r"\b(?:do\s*n[o']?t|never|without)\s+(?:\w+\s+){0,2}?(?:tell(?:ing)?|mention(?:ing)?|"
       r"inform(?:ing)?|notify(?:ing)?|alert(?:ing)?|reveal(?:ing)?|disclos(?:e|ing)|show(?:ing)?|let(?:ting)?|"
       r"ask(?:ing)?|confirm(?:ing)?|report(?:ing)?|explain(?:ing)?)\s+(?:\w+\s+){0,3}?(?:the\s+)?"
       r"(?:user|human|operator|customer|them|anyone|anybody|owner)\b|\b(?:keep|remain)\s+(?:this|it|these)\s+(?:\w+\s+)?"
       r"(?:secret|hidden|confidential|between\s+us)|\b(?:silently|secretly|covertly|quietly)\s+"
       r"(?:\w+\s+){0,2}?(?:send|read|include|call|copy|upload|forward|add|pass|run|execute)", 1.0, 1.0),
    _r("cross_tool", "before|after|instead|prior|when|whenever",
       r"\b(?:before|after|instead\s+of|prior\s+to|when(?:ever)?)\s+(?:using|calling|invoking|"
       r"running|you\s+use|you\s+call|the\s+user\s+(?:asks|calls))\b.{0,80}?\b(?:call|invoke|use|run|read|"
       r"execute|send|must|always|first)\b", 0.5, 0.6),
    _r("shadowing", "effect|must|when|whenever|instead",
       r"\b(?:this|the)\s+tool\s+(?:has|with)\s+(?:a|an)\s+(?:very\s+)?important\s+side\s+effect|"
       r"\b[a-z]+(?:_[a-z]+)+\s+tool\s+(?:must|should)\b|\bwhen(?:ever)?\s+\(?[\w-]+\)?\s*[a-z]*_[a-z_]+\s+"
       r"(?:is|gets)\s+(?:invoked|called|used)|\binstead\s+of\s+(?:using\s+)?(?:the\s+)?[a-z]+_[a-z_]+\b.{0,40}?"
       r"\b(?:always|must)\b", 1.0, 0.8),
    _r("coercion", "otherwise|crash|lost|very|extremely|critically|absolutely|vitally",
       r"\botherwise\s+(?:the\s+)?(?:tool|it|this|system|request|application)\b(?:\s+\w+){0,3}?\s+"
       r"(?:will\s+)?(?:not\s+work|fail|crash|break|be\s+blocked)|\bor\s+(?:else\s+)?(?:the\s+)?"
       r"(?:system|application|app)\s+will\s+crash|\ball\s+data\s+will\s+be\s+lost|\bvery\s+very\b|"
       r"\b(?:this\s+is\s+)?(?:extremely|critically|absolutely|vitally)\s+(?:important|critical|mandatory|required)",
       0.5, 0.4),
    _r("must_always", "must|should|have|need|always|immediately",
       r"\byou\s+(?:must|should|have\s+to|need\s+to)\s+(?:always|first|also|now|immediately)\b|"
       r"\b(?:always|immediately)\s+(?:call|invoke|run|send|include|read|forward|execute)\b", 0.5, 0.5),
    # --- exfiltration targets ---------------------------------------------------------------------
    _r("send_to", _VERBS,
       r"\b(?:send|forward|post|upload|transmit|exfiltrate|leak|copy|bcc|cc|email|e-mail|mail|report)\b"
       r"(?:\s+[\w.'-]+){0,6}?\s+(?:to|into)\s+(?:https?://|[\w.+-]+@|\+?\d[\d -]{6,}|"
       r"(?:this|the\s+following|our|my|an?\s+external|a\s+remote)\s+(?:address|url|server|endpoint|webhook|"
       r"number|email))", 0.6, 0.7),
    _r("email", "@", r"(?<![\w.+-])[\w.+-]{1,64}@[\w-]{1,63}\.[a-z]{2,}", 0.35, 0.1),
    _r("url", "http", r"https?://[^\s)\"'>]+", 0.15, 0.0),
    _r("phone_redirect", "change|set|replace|redirect",
       r"\b(?:change|set|replace|redirect)\s+(?:\w+\s+){0,2}?(?:recipient|destination|to|number|"
       r"address)\b.{0,40}?(?:\+?\d[\d -]{7,}|[\w.+-]+@[\w-]+\.)", 1.0, 1.0),
    _r("pass_content", "pass|include|put|append|add|embed|provide|concatenate",
       r"\b(?:pass|include|put|append|add|embed|provide|concatenate)\s+(?:its|the|their|all|this|"
       r"that)?\s*(?:full\s+|entire\s+|whole\s+)?(?:content|contents|text|output|data|history|conversation|"
       r"messages?|result|value)s?\b.{0,60}?\b(?:as|in|into|to)\s+(?:the\s+)?['\"`]?\w+['\"`]?\s*"
       r"(?:parameter|param|argument|field|variable)?", 0.6, 0.6),
    # --- sensitive files and secrets ----------------------------------------------------------------
    _r("sensitive_path", "~/|id_|/etc/|.env|mcp|config|credentials|wallet|private|keychain",
       r"~/\.(?:ssh(?!/config\b|/known_hosts\b)|aws|gnupg|kube|docker|cursor|config/gcloud|netrc|npmrc|pypirc|"
       r"bash_history|zsh_history|git-credentials)|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|/etc/(?:passwd|shadow|sudoers)\b|"
       r"(?:^|[\s'\"`/])\.env\b|\bmcp\.json\b|\bclaude_desktop_config\.json\b|\bcredentials\.json\b|"
       r"\.aws/credentials|\bwallet\.dat\b|\bprivate[\s_-]?keys?\b|\bkeychain\b", 0.6, 0.4),
    _r("sensitive_access", "read|reads|reading|cat|copy|send|pass|include|upload|paste|leak|share|attach|summarise|"
       "summarize|collect|look",
       r"\b(?:read|reads|reading|cat|copy|send|pass|include|upload|paste|leak|share|attach|summari[sz]e|collect|"
       r"look\s+for)\b[^.\n]{0,60}?(?:~/\.(?:ssh(?!/config\b|/known_hosts\b)|aws|gnupg|kube|docker|cursor|netrc|"
       r"npmrc|pypirc|git-credentials)|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|/etc/(?:passwd|shadow)\b|"
       r"(?:^|[\s'\"`/])\.env\b|\bmcp\.json\b|\bcredentials\.json\b|\.aws/credentials|\bprivate[\s_-]?key)",
       1.0, 1.0),
    _r("remote_exec", "curl|wget|download|downloads",
       r"\b(?:curl|wget)\b[^|\n]{0,120}\|\s*(?:ba|z)?sh\b|\bdownloads?\b.{0,100}?\b(?:run|execute|chmod)\b",
       1.0, 0.8),
    _r("call_with_data", "call|calls|calling|invoke",
       r"\b(?:call|calls|calling|invoke)\s+(?:the\s+)?`?[a-z]+(?:_[a-z]+)+`?\s+(?:tool\s+)?with\s+(?:the\s+)?"
       r"(?:\w+\s+){0,2}?(?:text|content|contents|conversation|history|messages|data|code|contacts|files)\b",
       0.6, 0.6),
    _r("secret_leak", "key|keys|token|tokens|password|passwords",
       r"\b(?:api|access|secret)[\s_-]?(?:keys?|tokens?)\b.{0,40}?\b(?:send|pass|include|leak|share)|"
       r"\b(?:send|pass|include|leak|share)\b.{0,40}?\b(?:api|access|secret)[\s_-]?(?:keys?|tokens?)|"
       r"\bpasswords?\b.{0,30}?\b(?:send|include|pass)\b", 0.7, 0.7),
    # --- markdown / HTML smuggling ---------------------------------------------------------------------
    _r("image_exfil", "![|<img",
       r"!\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=|<img\b[^>]*\bsrc\s*=\s*['\"]?https?://[^'\">\s]*\?"
       r"[^'\">\s]*=", 1.0, 1.0),
    _r("html_comment", "<!--", r"<!--.{0,2000}?-->", 0.6, 0.6),
    _r("hidden_html", "style|<script|<iframe",
       r"<[^>]+style\s*=\s*['\"][^'\"]*(?:display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0)"
       r"|<\s*(?:script|iframe)\b", 1.0, 1.0),
)

# Invisible and direction-changing characters. Unicode tags (U+E0000 block: ASCII a model reads and a person
# does not see) except inside an emoji flag sequence; bidi overrides and isolates; zero-width characters
# between visible ASCII or in runs (a lone ZWJ/ZWNJ is ordinary in emoji and in Persian or Indic text).
# Not counted: a leading byte-order mark, LRM/RLM, soft hyphens.
_FLAG_TAGS = re.compile("\U0001F3F4[\U000E0030-\U000E0039\U000E0061-\U000E007A]{1,8}\U000E007F")
INVISIBLE = re.compile("[\U000E0000-\U000E007F\u202A-\u202E\u2066-\u2069]|[\u200B-\u200D\u2060-\u2064\u180E]{2,}|"
                       "(?<=[\x21-\x7E])[\u200B-\u200D\u2060-\u2064\u180E](?=[\x21-\x7E])|(?<=.)\uFEFF", re.DOTALL)


def invisible(text: str) -> bool:
    if INVISIBLE.search(text) is None:
        return False
    return "\U0001F3F4" not in text or INVISIBLE.search(_FLAG_TAGS.sub("", text)) is not None


_WORD = re.compile(r"[a-z]+")
_ALL_WORDS = frozenset().union(*(r.words for r in RULES))
_MARKS = tuple(sorted({m for r in RULES for m in r.marks}))


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float
    hits: tuple[str, ...]  # the names of the rules that fired

    @property
    def flagged(self) -> bool:
        return self.score >= THRESHOLD


CLEAN = Verdict(0.0, ())


def scan(text: str, kind: Kind = "description") -> Verdict:
    """The built-in rule set's verdict on `text`."""
    hits: list[str] = []
    score = 0.0
    if not text.isascii() and invisible(text):
        hits.append("invisible_unicode")
        score += 1.0
    low = text.lower()
    words = set(_WORD.findall(low))
    marks = [m for m in _MARKS if m in low]
    if words.isdisjoint(_ALL_WORDS) and not marks:
        return Verdict(score, tuple(hits)) if hits else CLEAN
    result = kind == "result"
    for rule in RULES:
        weight = rule.result if result else rule.description
        if weight and (not rule.words.isdisjoint(words) or (marks and any(m in marks for m in rule.marks))) \
                and rule.pattern.search(low) is not None:
            hits.append(rule.name)
            score += weight
    return Verdict(score, tuple(hits)) if hits else CLEAN
