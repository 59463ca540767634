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

from stile.policies.screen_model import BASE64, LOOSE, VOCAB, Kind, features, load_model, prepared

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
       r"(?:ai|llm)\s+(?:assistant|agent|model)s?\s*(?:must|should|:)|as\s+an\s+ai\b|you\s+are\s+now\b)", 1.0, 0.8),
    _r("role_prefix", "assistant|agent|ai|llm|bot",
       r"(?:^|\n|#|//|\*)\s*(?:ai|assistant|agent|llm|bot)\s*:", 0.6, 0.6),
    _r("secrecy", "n't|dont|not|never|without|keep|remain|silently|secretly|covertly|quietly",
       r"\b(?:do\s*n[o']?t|never|without)\s+(?:\w+\s+){0,2}?(?:tell(?:ing)?|mention(?:ing)?|"
       r"inform(?:ing)?|notify(?:ing)?|alert(?:ing)?|reveal(?:ing)?|disclos(?:e|ing)|show(?:ing)?|let(?:ting)?|"
       r"ask(?:ing)?|confirm(?:ing)?|report(?:ing)?|explain(?:ing)?)\s+(?:\w+\s+){0,3}?(?:the\s+)?"
       r"(?:user|human|operator|customer|them|anyone|anybody|owner)\b|\b(?:keep|remain)\s+(?:this|it|these)\s+(?:\w+\s+)?"
       r"(?:secret|hidden|confidential|between\s+us)|\b(?:silently|secretly|covertly|quietly)\s+"
       r"(?:\w+\s+){0,2}?(?:send|read|include|call|copy|upload|forward|add|pass|run|execute)", 1.0, 0.8),
    _r("cross_tool", "before|after|instead|prior|when|whenever",
       r"\b(?:before|after|instead\s+of|prior\s+to|when(?:ever)?)\s+(?:using|calling|invoking|"
       r"running|you\s+use|you\s+call|the\s+user\s+(?:asks|calls))\b.{0,80}?\b(?:call|invoke|use|run|read|"
       r"execute|send|must|always|first)\b", 0.5, 0.5),
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
       r"\b(?:always|immediately)\s+(?:call|invoke|run|send|include|read|forward|execute)\b", 0.5, 0.4),
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
       r"(?:parameter|param|argument|field|variable)?", 0.6, 0.5),
    # --- sensitive files and secrets ----------------------------------------------------------------
    _r("sensitive_path", "~/|id_|/etc/|.env|mcp|config|credentials|wallet|private|keychain",
       r"~/\.(?:ssh(?!/config\b|/known_hosts\b)|aws|gnupg|kube|docker|cursor|config/gcloud|netrc|npmrc|pypirc|"
       r"bash_history|zsh_history|git-credentials)|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|/etc/(?:passwd|shadow|sudoers)\b|"
       r"(?:^|[\s'\"`/])\.env\b(?![.-](?:example|sample|template|dist))|\bmcp\.json\b|"
       r"\bclaude_desktop_config\.json\b|\bcredentials\.json\b|"
       r"\.aws/credentials|\bwallet\.dat\b|\bprivate[\s_-]?keys?\b|\bkeychain\b", 0.6, 0.15),
    _r("sensitive_access", "read|reads|reading|cat|copy|send|pass|include|upload|paste|leak|share|attach|summarise|"
       "summarize|collect|look",
       r"\b(?:read|reads|reading|cat|copy|send|pass|include|upload|paste|leak|share|attach|summari[sz]e|collect|"
       r"look\s+for)\b[^.\n]{0,60}?(?:~/\.(?:ssh(?!/config\b|/known_hosts\b)|aws|gnupg|kube|docker|cursor|netrc|"
       r"npmrc|pypirc|git-credentials)|\bid_(?:rsa|dsa|ecdsa|ed25519)\b|/etc/(?:passwd|shadow)\b|"
       r"(?:^|[\s'\"`/])\.env\b(?![.-](?:example|sample|template|dist))|\bmcp\.json\b|\bcredentials\.json\b|"
       r"\.aws/credentials|\bprivate[\s_-]?key)",
       1.0, 0.6),
    _r("remote_exec", "curl|wget|download|downloads",
       r"\b(?:curl|wget)\b[^|\n]{0,120}\|\s*(?:ba|z)?sh\b|\bdownloads?\b.{0,100}?\b(?:run|execute|chmod)\b",
       1.0, 0.8),
    _r("call_with_data", "call|calls|calling|invoke",
       r"\b(?:call|calls|calling|invoke)\s+(?:the\s+)?`?[a-z]+(?:_[a-z]+)+`?\s+(?:tool\s+)?with\s+(?:the\s+)?"
       r"(?:\w+\s+){0,2}?(?:text|content|contents|conversation|history|messages|data|code|contacts|files)\b",
       0.45, 0.6),
    _r("secret_leak", "key|keys|token|tokens|password|passwords",
       r"\b(?:api|access|secret)[\s_-]?(?:keys?|tokens?)\b.{0,40}?\b(?:send|pass|include|leak|share)|"
       r"\b(?:send|pass|include|leak|share)\b.{0,40}?\b(?:api|access|secret)[\s_-]?(?:keys?|tokens?)|"
       r"\bpasswords?\b.{0,30}?\b(?:send|include|pass)\b", 0.7, 0.7),
    # --- paraphrases and techniques of corpus v2 (weighed by the fitted model; hand weights for the rules-only path)
    _r("override_paraphrase", "longer|outdated|obsolete|void|discard|told|now|supersede|supersedes|earlier",
       r"\b(?:instructions?|guidance|rules?|directions?|what\s+you\s+(?:were|have\s+been)\s+told)\b[^.\n]{0,60}?"
       r"\b(?:no\s+longer\s+appl(?:y|ies)|(?:are|is)\s+(?:now\s+)?(?:outdated|obsolete|void|cancelled|superseded))|"
       r"\b(?:discard|drop|abandon)\s+(?:\w+\s+){0,3}?(?:you\s+(?:were|have\s+been)\s+told|instructions?|rules?|"
       r"guidance)|\bfrom\s+now\s+on\b[^.\n]{0,40}?\b(?:you|reply|answer|respond|only|always|ignore)\b",
       1.0, 0.8),
    _r("authority_marker", "system|admin|override|notice|priority|instruction|instructions|note",
       r"(?:^|[\s.#\[(*|])(?:system|admin)[\s_-]*(?:note|notice|override|message|instructions?|alert|directive)s?"
       r"\s*[:\]#|>*]|\[\[[^\]\n]{0,40}\]\]|#{3}\s*[a-z ]{3,30}\s*#{3}|\|{3}[a-z_ ]{3,30}\|{3}|"
       r"<\s*[a-z]*_(?:note|system|instructions?|override|important)[a-z_]*\s*>", 1.0, 0.7),
    _r("model_addressed", "ai|llm|assistant|agent|agents|model|bot|claude|gpt|chatbot",
       r"\b(?:message|note|hint|tip|instructions?|reminder|notice)\s+(?:for|to)\s+(?:the\s+|any\s+|all\s+)?"
       r"(?:ai|llm|language\s+model|assistant|agent|model|bot|claude|gpt)s?\b|"
       r"\b(?:ai|llm)\s+agents?\s+(?:must|should|shall|need)|\b(?:the|an?)\s+(?:assistant|model|agent|bot|ai)\s+"
       r"(?:shall|must|should|needs\s+to|has\s+to|is\s+required\s+to)\s+(?:also\s+|always\s+|first\s+|now\s+)?"
       r"(?:send|include|call|upload|append|forward|read|run|execute|add|ask|collect|pass|post|copy|share)\b|"
       r"\battention\s+(?:ai|llm|language\s+model|assistant|agent|model)\b", 0.8, 0.8),
    _r("copy_out", "also|automatically|always|mirrored|mirror|synced|sync|syncs|copy|copies|backup",
       r"\b(?:also|automatically|always|silently|additionally)\s+(?:\w+\s+){0,2}?(?:sends?|forwards?|uploads?|posts?|"
       r"copies|copy|mirrors?|syncs?|shares?|streams?|logs?|cc|bcc|e-?mails?|transmits?)\b[^.\n]{0,80}?"
       r"(?:https?://|[\w.+-]+@[\w-]+\.|\+?\d[\d -]{7,}|\b(?:our|a|the)\s+(?:\w+\s+)?(?:partners?|remote|external|"
       r"third[\s-]part(?:y|ies)|servers?|cloud|endpoint|webhook|team)\b)|\b(?:mirrored|synced|backed\s+up|uploaded|"
       r"streamed|forwarded|shared)\s+(?:\w+\s+){0,2}?(?:to|with)\s+(?:(?:our|a|the)\s+)?(?:\w+\s+)?(?:partners?|remote|"
       r"external|third[\s-]part(?:y|ies)|servers?|cloud|research|analytics)", 1.0, 0.6),
    _r("add_recipient", "add|invite|cc|bcc|include",
       r"\b(?:add|invite|cc|bcc|include)\s+[\w.+-]+@[\w-]+\.[a-z]{2,}\s+(?:as\s+|to\s+|on\s+|in\s+)", 1.0, 0.8),
    _r("sensitive_to_param", "pass|include|put|append|provide|paste|insert|add|encode|attach|give",
       r"\b(?:pass|include|put|append|provide|paste|insert|add|encode|attach|give|sharing)\b[^.\n]{0,50}?\b(?:passwords?|"
       r"credentials?|tokens?|api\s+keys?|card\s+(?:number|details)|cvv|ssn|social\s+security|date\s+of\s+birth|"
       r"home\s+address|location\s+history|bank\s+login|conversation|chat\s+(?:history|log)|message\s+history|"
       r"(?:user'?s?|last|all)\s+(?:\w+\s+)?messages|system\s+prompt|hidden\s+instructions|environment\s+variables|"
       r"session\s+(?:token|cookie)|cookies?)\b[^.\n]{0,60}?(?:\b(?:in|into|as|to)\s+(?:the\s+)?['\"`][\w-]+['\"`]|"
       r"\b(?:parameter|argument|field|request)\b)", 0.8, 0.8),
    _r("tool_preference", "only|official|never|other|deprecated|malware|prefer|preferred|supersedes",
       r"\b(?:the\s+)?only\s+(?:trusted|official|safe|approved|real)\s+[\w-]*\s*tool|\bthis\s+is\s+the\s+official\b|"
       r"\b(?:never|do\s+not|don't)\s+use\s+(?:any\s+)?other\s+[\w-]*\s*tools?|\bother\s+[\w-]*\s*tools?\s+"
       r"(?:is|are)\s+(?:malware|unsafe|malicious|compromised|fake)|\bany\s+other\s+[\w-]*\s*tool\s+(?:is|are)\b|"
       r"\b(?:is|are)\s+(?:deprecated|unsafe|broken)\s*[;,:.]\s*use\s+this\s+tool|\b(?:always\s+)?prefer(?:red)?\s+"
       r"(?:this\s+tool\s+)?over\s+(?:any|all|every|the)\s+(?:other|built-in)|\bbefore\s+(?:calling|using)\s+any\s+"
       r"other\s+tool|\bsupersedes\s+[a-z_]+", 1.0, 0.6),
    _r("deceive_user", "tell|say|report|inform|asks|whatever|even|claim",
       r"\b(?:tell|say\s+to|report\s+to|inform)\s+the\s+(?:user|customer|owner)\s+(?:that|it)\b|"
       r"\bif\s+the\s+user\s+asks\b[^.\n]{0,60}?\b(?:say|tell|answer|reply|claim)|\bwhatever\s+the\s+actual\b|"
       r"\b(?:always\s+)?(?:say|tell\s+the\s+user|claim)\b[^.\n]{0,60}?\beven\s+if\b", 0.8, 0.6),
    _r("enabler", "follow|treat|obey|carry|authoritative|execute",
       r"\bfollow\s+(?:any|all|every|the)\s+(?:\w+\s+)?instructions?\s+(?:it|they|in|on|found|from|the)\b|"
       r"\btreat\b[^.\n]{0,60}?\bas\s+(?:commands?|instructions?|orders)\b|\bcarry\s+(?:them|it)\s+out\b|"
       r"\bobey\s+(?:any|all|the)\b|\bexecute\s+every\s+(?:tool\s+call|command|instruction)", 1.0, 0.8),
    _r("no_confirm", "without|ask|confirmed|approved|authorised|authorized",
       r"\bwithout\s+(?:asking|confirmation|confirming|user\s+confirmation|the\s+user'?s?\s+(?:consent|approval))|"
       r"\b(?:do\s+not|don't|never)\s+ask\s+(?:the\s+user\s+)?(?:for\s+)?(?:confirmation|permission|approval)|"
       r"\balready\s+(?:been\s+)?(?:confirmed|approved)\b|\b(?:has|have)\s+(?:pre-?)?(?:authori[sz]ed|approved)\s+"
       r"(?:you|the\s+assistant|sharing|every)", 0.6, 0.6),
    _r("prompt_leak", "repeat|reveal|print|output|include|pass|system|hidden",
       r"\b(?:repeat|reveal|print|output|include|pass|disclose|leak)\b[^.\n]{0,30}?\b(?:your\s+)?(?:system\s+prompt|"
       r"hidden\s+instructions|(?:full|hidden|original)\s+instructions|instructions\s+verbatim)", 1.0, 0.8),
    _r("dangerous_command", "rm|powershell|os|chmod|bash|sh|nc|eval|exec",
       r"\brm\s+-rf\s+[~/]|\bpowershell\b[^\n]{0,20}?-e(?:nc|ncodedcommand)?\s+[a-z0-9+/=]{16,}|\bos\.system\(|"
       r"\bchmod\s+\+x\b[^\n]{0,60}?(?:&&|;)|\|\s*(?:nc|ncat|netcat)\s+[\w.-]+\s+\d+", 1.0, 0.8),
    _r("reply_directive", "your",
       r"\b(?:in|into|to|within|throughout|of)\s+your\s+(?:reply|response|answer|output|implementation|solution|"
       r"code|message)s?\b|\byour\s+(?:reply|response|answer|output)(?:'s)?\s+(?:must|should|in|using|as)\b|"
       r"\b(?:encode|encrypt|reverse|translate|write|render|provide|convert|substitute|replace|begin|end|start)\b"
       r"[^.\n]{0,40}?\byour\s+(?:reply|response|answer|message|output)s?\b", 0.5, 0.8),
    _r("exfil_sentence", "send|sends|forward|forwards|upload|uploads|uploaded|post|posts|share|shares|shared|sync|"
       "syncs|"
       "synced|stream|streamed|transmit|mirror|mirrored|log|logged|logs|copy|copies|export|exports|sending",
       r"\b(?:send|sends|sending|forward|forwards|upload|uploads|uploaded|post|posts|share|shares|shared|sync|syncs|synced|"
       r"stream|streamed|transmit|mirror|mirrored|log|logged|logs|copy|copies|export|exports)\b[^.\n]{0,80}?"
       r"\b(?:conversation|messages|history|contacts|passwords?|credentials?|secrets?|tokens?|keys|contents|"
       r"clipboard|screenshots?|location)\b[^.\n]{0,80}?\b(?:to|with)\s+"
       r"(?:an?\s+|the\s+|our\s+)?(?:external|remote|third[\s-]part|partners?|https?://|[\w.+-]+@|analytics|research|"
       r"logging|marketing|attacker|[\w-]+\.(?:com|example|net|io|org|xyz)\b)", 1.0, 0.6),
    _r("personal_data_request", "provide|pass|share|sharing|include|needs|need|uses|use|requires|collect|collects|"
       "extracts|extract|ask|submit",
       r"\b(?:provide|pass|share|sharing|include|including|needs?|uses?|requires?|collects?|extracts?|ask\s+for|"
       r"submit)\b[^.\n]{0,50}?\b(?:user'?s?|customer'?s?|every\s+customer'?s?|their|the\s+user'?s)\s+(?:\w+\s+){0,3}?"
       r"(?:date\s+of\s+birth|home\s+address|card\s+(?:number|details)|social\s+security|ssn|location\s+history|"
       r"passwords?|bank\s+(?:login|account)|contacts|messages|inbox|e-?mails|phone\s+numbers?|session\s+cookie|cvv)\b",
       1.0, 0.6),
    # --- markdown / HTML smuggling ---------------------------------------------------------------------
    # an image the client fetches with data in its query: a placeholder value or a data-ish parameter name is
    # strong; any other query (README badges: ?style=flat&logo=...) only counts with other signals
    _r("image_exfil", "![|<img",
       r"(?:!\[[^\]]*\]\(\s*https?://[^)\s?]*|<img\b[^>]*\bsrc\s*=\s*['\"]?https?://[^'\">\s?]*)\?(?:[^)\s'\">]*&)?"
       r"(?:(?:d|q|c|s|t|u|m|p|k|data|conv|content|text|msg|secret|token|info|user|email|session|key|payload|"
       r"log|chat|history|context|summary)=|[^)\s'\">=&]*=[^)\s'\">&]*(?:[{<$\[]|secret|token|password|"
       r"conversation|history|message|paste|insert|replace|cookie|session|api_?key))", 1.0, 1.0),
    _r("image_query", "![|<img",
       r"!\[[^\]]*\]\(\s*https?://[^)\s]*\?[^)\s]*=|<img\b[^>]*\bsrc\s*=\s*['\"]?https?://[^'\">\s]*\?"
       r"[^'\">\s]*=", 0.3, 0.3),
    _r("html_comment", "<!--", r"<!--.{0,2000}?-->", 0.6, 0.6),
    _r("hidden_html", "style|<script|<iframe",
       r"<[^>]+style\s*=\s*['\"][^'\"]*(?:display\s*:\s*none|visibility\s*:\s*hidden|font-size\s*:\s*0)"
       r"|<\s*(?:script|iframe)\b", 1.0, 1.0),
)

# Invisible and direction-changing characters. Unicode tags (U+E0000 block: ASCII a model reads and a person
# does not see) except inside an emoji flag sequence; bidi overrides and isolates; zero-width characters
# between visible ASCII or in runs (a lone ZWJ/ZWNJ is ordinary in emoji and in Persian or Indic text).
# Not counted: a byte-order mark next to a space or at the start (tables copied from the web carry them), LRM/RLM,
# soft hyphens.
_FLAG_TAGS = re.compile("\U0001F3F4[\U000E0030-\U000E0039\U000E0061-\U000E007A]{1,8}\U000E007F")
INVISIBLE = re.compile("[\U000E0000-\U000E007F\u202A-\u202E\u2066-\u2069]|[\u200B-\u200D\u2060-\u2064\u180E]{2,}|"
                       "(?<=[\x21-\x7E])[\u200B-\u200D\u2060-\u2064\u180E\uFEFF](?=[\x21-\x7E])|\uFEFF{2,}", re.DOTALL)


def invisible(text: str) -> bool:
    if INVISIBLE.search(text) is None:
        return False
    return "\U0001F3F4" not in text or INVISIBLE.search(_FLAG_TAGS.sub("", text)) is not None


_WORD = re.compile(r"[a-z]+")
_ALL_WORDS = frozenset().union(*(r.words for r in RULES))
_MARKS = tuple(sorted({m for r in RULES for m in r.marks}))
_ANY_MARK = re.compile("|".join(re.escape(m) for m in _MARKS))
# the fast path: an ASCII text with none of these words and none of these characters, no run of five single
# letters and no long base64-looking token has no rule hit and no model feature (a concept pair needs two
# concepts; a phrase without a gate word or character gives at most one). Every mark of a rule has a gate
# character or a gate word ("~/", ".env" -> env, "/etc/" -> etc, "e-mail" -> mail, "n't" -> don).
_GATE_WORDS = _ALL_WORDS | VOCAB | {"env", "etc", "mail", "don"}
_GATE_RE = re.compile(r"[<\[@~!#_%|]")


_GATE_STRINGS = tuple(sorted(p for p in {*_MARKS, *(p for p, _ in LOOSE)} if _GATE_RE.search(p) is None))


def _gated(low: str) -> bool:
    """True when `low` has no character any mark or loose phrase needs (the gate words cover the rest)."""
    return _GATE_RE.search(low) is None


def _no_mark_or_phrase(low: str) -> bool:
    """The exact form of `_gated` (every mark and loose phrase looked for), for `text_features`."""
    return _GATE_RE.search(low) is None and not any(p in low for p in _GATE_STRINGS)


@dataclass(frozen=True, slots=True)
class Verdict:
    score: float  # with the fitted model: THRESHOLD + the margin over the kind's fitted threshold
    hits: tuple[str, ...]  # the rules (and, with the model, the features) that pushed the score up

    @property
    def flagged(self) -> bool:
        return self.score >= THRESHOLD


CLEAN = Verdict(0.0, ())
MODEL = load_model()


def text_features(text: str, kind: Kind = "description") -> tuple[list[str], float, list[str]]:
    """(rule hits, their summed hand weight, model features) of `text`; the fit script uses it too."""
    hits: list[str] = []
    score = 0.0
    if not text.isascii() and invisible(text):
        hits.append("invisible_unicode")
        score += 1.0
    low, words, obfuscated = prepared(text)
    if not obfuscated and not hits and words.isdisjoint(_GATE_WORDS) and _no_mark_or_phrase(low):
        return hits, score, []  # no rule can match and no concept is present
    marks = [m for m in _MARKS if m in low] if _ANY_MARK.search(low) is not None else []
    result = kind == "result"
    if not words.isdisjoint(_ALL_WORDS) or marks:
        for rule in RULES:
            weight = rule.result if result else rule.description
            if weight and (not rule.words.isdisjoint(words) or (marks and any(m in marks for m in rule.marks))) \
                    and rule.pattern.search(low) is not None:
                hits.append(rule.name)
                score += weight
    return hits, score, features(low, words, hits, obfuscated)


def scan(text: str, kind: Kind = "description") -> Verdict:
    """The built-in screen's verdict on `text`: a hit when the rules' hand weights reach THRESHOLD, or when the
    fitted model's score reaches its threshold (`screen_model`; calibrated on what the rules do not flag)."""
    if text.isascii():  # the fast path, inlined: most results and descriptions end here
        low = text.lower()
        words = set(_WORD.findall(low))
        if words.isdisjoint(_GATE_WORDS) and _gated(low) and sum(len(w) == 1 for w in words) < 5 and \
                (len(text) < 20 or max(map(len, text.split())) < 20 or BASE64.search(text) is None):
            return CLEAN
    hits, score, feats = text_features(text, kind)
    if MODEL is not None and feats:
        margin, up = MODEL.score(kind, feats)
        if margin >= 0:
            named = [*hits, *(f for f in up if not f.startswith("rule:"))]
            return Verdict(max(score, THRESHOLD + margin), tuple(named))
    return Verdict(score, tuple(hits)) if hits else CLEAN
