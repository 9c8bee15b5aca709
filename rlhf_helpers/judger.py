"""Stage 4, the judger: an automatic judge that scores replies and turns pairs into preference labels.

Why a judger? Human preference labels are slow and expensive. *AI feedback* (RLAIF, Bai et al.
2022; Lee et al. 2023) replaces the human with a judge that compares two replies and says which
is better. The same judge, kept independent of the reward model, is the course's **gold judge**:
it measures whether PPO really improved the policy or only learnt to please the reward model.

The seed project's judger had seven weighted criteria, most of them constant placeholders (a
criterion that returns 0.5 for every reply adds nothing but an offset). Here every criterion is a
real, batched scoring function ``f(prompts, responses) -> scores in [0, 1]``:

* ``relevance``  cosine similarity of MiniLM sentence embeddings of prompt and reply
* ``facts``      uses the prompt's facts (name, order number, product, amounts), states no wrong one
* ``next_step``  gives a concrete action with a timeframe, not a vague promise or a deflection
* ``concise``    no repeated sentences, no boilerplate filler, a length that fits the job
* ``polite``     greeting, apology/empathy and thanks; no rude or blaming lines
* ``reward_model`` (optional) the trained reward model's score through a sigmoid

The lexical criteria look for *general* cues (action verbs, time expressions, corporate filler,
blame) rather than the course generator's exact sentences, so a paraphrased reply is still scored
sensibly; the tests check that on hand-written replies.

A judge combines criteria with weights into one score ``s`` in [0, 1] (a weighted mean) and compares
two replies with a Bradley-Terry probability on the score difference:

    P(A better than B) = sigmoid((s_A - s_B) / temperature)

and calls a tie when ``|s_A - s_B| < tie_margin``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

CriterionFn = Callable[[list[str], list[str]], Sequence[float]]

#: Weights of the gold judge: the four rubric criteria count fully, relevance a little (every
#: reply in the course data is on topic, so relevance mostly separates off-topic policy output).
GOLD_WEIGHTS: dict[str, float] = {"relevance": 0.5, "facts": 1.0, "next_step": 1.0, "concise": 1.0, "polite": 1.0}
#: Weight of the reward-model criterion in :func:`judge_with_reward_model`.
REWARD_MODEL_WEIGHT = 1.0
DEFAULT_TEMPERATURE = 0.05
DEFAULT_TIE_MARGIN = 0.02
VERDICTS = ("A", "B", "tie")


# =========================================================================== text helpers

_SENTENCE_SPLIT = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` (split after . ! ? followed by whitespace); empty pieces dropped."""
    return [s.strip() for s in _SENTENCE_SPLIT.split(text.strip()) if s.strip()]


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _any(patterns: Sequence[re.Pattern], text: str) -> bool:
    return any(p.search(text) for p in patterns)


def _compile(*patterns: str) -> tuple[re.Pattern, ...]:
    return tuple(re.compile(p, re.IGNORECASE) for p in patterns)


def _check_lengths(prompts: Sequence[str], responses: Sequence[str]) -> None:
    if len(prompts) != len(responses):
        raise ValueError(f"need one prompt per response, got {len(prompts)} prompts and {len(responses)} responses")


# =========================================================================== relevance


def relevance(prompts: list[str], responses: list[str]) -> np.ndarray:
    """How much the reply is about what the customer wrote: cosine similarity of the MiniLM
    sentence embeddings of prompt and reply, clipped to [0, 1].

    Why: a reply about another ticket, or generic text that could answer anything, sits far from
    the prompt in embedding space, whatever its tone. It cannot tell a right order number from a
    wrong one (embeddings blur digits), which is why ``facts`` exists.
    """
    from rlhf_helpers.embeddings import text_similarity

    _check_lengths(prompts, responses)
    return np.clip(text_similarity(list(prompts), list(responses)), 0.0, 1.0)


# =========================================================================== facts

#: Colour and material words: a product's colour is checked against these (general English,
#: not the generator's list, so "navy kettle" vs "blue kettle" is caught too).
COLOUR_WORDS = frozenset(
    """red blue green black white grey gray yellow pink purple orange brown beige navy teal silver gold
    golden cream ivory oak steel walnut pine bamboo copper brass chrome maroon violet turquoise charcoal
    olive mint lilac tan khaki indigo crimson scarlet cyan magenta lavender coral peach burgundy
    aqua bronze glass marble wooden metal plastic stone slate sand""".split()
)
_FIELD = re.compile(r"\b(customer|name|order(?:\s+number)?|product|item)\s*:\s*(.+?)(?=\.\s|\.$|\n|$)", re.IGNORECASE)
_ORDER_IN_TEXT = re.compile(r"(?:#\s?(\d{3,}))|(?:\border\s+(?:number\s+|no\.?\s*|num\.?\s*)?#?\s?(\d{4,}))", re.I)
_MONEY = re.compile(
    r"(?:[$€£]\s?(\d+(?:[.,]\d{1,2})?))|(?:\b(\d+(?:[.,]\d{1,2})?)\s?(?:dollars|euros?|pounds|usd|eur|gbp)\b)", re.I
)
_MY_NAME = re.compile(r"\b(?:my name is|this is|i am|i'm)\s+([A-Z][a-z]+)\b")
_GREETING_NAME = re.compile(r"^\s*(?i:hi|hello|hey|dear|good (?:morning|afternoon|evening))\s*,?\s+([A-Z][a-z]+)")
_NOT_NAMES = frozenset({"there", "team", "customer", "again", "sir", "madam", "friend", "all", "everyone"})


@dataclass(frozen=True)
class PromptFacts:
    """The checkable facts of a prompt: who, which order, which product, which amounts."""

    name: str | None = None
    orders: frozenset[str] = frozenset()
    product: str | None = None
    amounts: frozenset[float] = frozenset()

    @property
    def colours(self) -> frozenset[str]:
        return frozenset(w for w in _words(self.product or "") if w in COLOUR_WORDS)

    @property
    def item(self) -> list[str]:
        """The product without its colour words ("blue desk lamp" -> ["desk", "lamp"])."""
        return [w for w in _words(self.product or "") if w not in COLOUR_WORDS]

    @property
    def empty(self) -> bool:
        return not (self.name or self.orders or self.product or self.amounts)


def _amounts(text: str) -> set[float]:
    return {float((a or b).replace(",", ".")) for a, b in _MONEY.findall(text)}


def _orders(text: str) -> set[str]:
    return {a or b for a, b in _ORDER_IN_TEXT.findall(text)}


def parse_facts(prompt: str) -> PromptFacts:
    """Facts stated in a prompt: ``Customer:``/``Order:``/``Product:`` fields (the course format)
    plus order numbers (``#12345``, "order 12345"), money amounts and "my name is X" anywhere."""
    name = product = None
    orders = set(_orders(prompt))
    for key, value in _FIELD.findall(prompt):
        key = key.lower()
        if key in ("customer", "name") and name is None:
            name = value.strip()
        elif key.startswith("order"):
            orders.update(re.findall(r"\d{3,}", value))
        elif key in ("product", "item") and product is None:
            product = value.strip()
    if name is None:
        m = _MY_NAME.search(prompt)
        name = m.group(1) if m else None
    return PromptFacts(name, frozenset(orders), product, frozenset(_amounts(prompt)))


def fact_check(facts: PromptFacts, response: str) -> dict[str, Any]:
    """Which facts the reply uses and which it contradicts (wrong order number, amount, colour or
    name). Returns ``{"used": {fact: bool}, "wrong": [fact, ...]}``."""
    words = _words(response)
    used: dict[str, bool] = {}
    wrong: list[str] = []
    if facts.name:
        used["name"] = facts.name.lower() in words
        m = _GREETING_NAME.match(response)
        if m and m.group(1).lower() not in _NOT_NAMES and m.group(1).lower() != facts.name.lower():
            wrong.append("name")
    reply_orders = _orders(response)
    if facts.orders:
        used["order"] = bool(reply_orders & facts.orders) or any(o in words for o in facts.orders)
    if reply_orders - facts.orders:
        wrong.append("order")
    item = facts.item
    if item:
        k = len(item)
        plural = [*item[:-1], item[-1] + "s"]
        hits = [i for i in range(len(words) - k + 1) if words[i : i + k] in (item, plural)]
        used["product"] = bool(hits)
        # a colour word right before the product that is not the product's colour: "red kettle" for a blue one
        before = [words[i - 1] for i in hits if i > 0]
        if facts.colours and any(w in COLOUR_WORDS and w not in facts.colours for w in before):
            wrong.append("colour")
    reply_amounts = _amounts(response)
    allowed = set(facts.amounts) | {2 * a for a in facts.amounts}  # "charged $40 twice" -> "$80 in total"
    if facts.amounts:
        used["amount"] = bool(reply_amounts & set(facts.amounts))
    if any(all(abs(a - b) > 0.005 for b in allowed) for a in reply_amounts):
        wrong.append("amount")
    return {"used": used, "wrong": wrong}


#: How much each fact counts when the reply uses it (missing facts in the prompt are skipped).
FACT_WEIGHTS = {"order": 0.35, "product": 0.3, "name": 0.25, "amount": 0.1}


def facts(prompts: list[str], responses: list[str]) -> np.ndarray:
    """Does the reply use the prompt's facts correctly? 0 when it states a fact that contradicts
    the prompt (another order number, amount, colour of the product or customer name); otherwise
    0.25 + 0.75 x the weighted share of the prompt's facts it uses (order number, product, name,
    amount; see ``FACT_WEIGHTS``). A prompt without checkable facts scores 0.5 (nothing to verify).

    Why: a support reply that confirms the wrong order or refunds the wrong amount is worse than
    useless, and a reply that names neither order nor product leaves the customer unsure it was
    read. Embedding similarity (``relevance``) cannot see a changed digit; this can.
    """
    _check_lengths(prompts, responses)
    out = np.empty(len(responses))
    parsed: dict[str, PromptFacts] = {}
    for i, (prompt, response) in enumerate(zip(prompts, responses)):
        pf = parsed.get(prompt) or parsed.setdefault(prompt, parse_facts(prompt))
        check = fact_check(pf, response)
        if check["wrong"]:
            out[i] = 0.0
        elif not check["used"]:
            out[i] = 0.5
        else:
            total = sum(FACT_WEIGHTS[f] for f in check["used"])
            got = sum(FACT_WEIGHTS[f] for f, ok in check["used"].items() if ok)
            out[i] = 0.25 + 0.75 * got / total
    return out


# =========================================================================== next step

_ACTION = re.compile(
    r"\b(send|sent|sending|ship|ships|shipped|shipping|dispatch\w*|refund\w*|replac\w*|cancel\w*|revers\w*|"
    r"credit\w*|reimburs\w*|e-?mail(?:ed)?|mailed|deliver(?:s|ed)?|arriv\w*|reach(?:es)?|updat\w*|chang\w*|"
    r"issu(?:e|ed|ing)|process\w*|book(?:ed)?|arrang\w*|schedul\w*|rerout\w*|redirect\w*|repair\w*|fix(?:ed)?|"
    r"exchang\w*|collect\w*|pick(?:ed)? up|void(?:ed)?|waiv\w*|remov\w*|add(?:ed)?|upgrad\w*|return label|"
    r"label|tracking|on (?:its|the) way|leaves|drop(?:s)? off|put through)\b",
    re.IGNORECASE,
)
# An action that is already done or under way ("I have refunded", "is cancelled", "is on its way") ...
_DONE = _compile(
    r"\b(i|we)\s*(have|'ve|has|had)\s+(just\s+|already\s+|now\s+)?\w+(ed|t|en|ne)\b",
    r"\b(is|are|was|were|has been|have been|'s been)\s+(now\s+|already\s+|being\s+)?\w+(ed|t|en|ne)\b",
    r"\bon (its|the) way\b",
    r"\b(is|are) now\b",
)
# ... or firmly promised ("will ship", "ships", "arrives").
_PROMISE = _compile(
    r"\b(will|'ll|shall|is going to|are going to)\s+(\w+\s+)?(\w+)\b",
    r"\b(ships|arrives|leaves|goes|reaches|shows|drops)\b",
)
_TIME = _compile(
    r"\bwithin\s+(a|an|one|two|three|four|five|six|seven|ten|\d+)(\s*-\s*\d+)?\s+(business\s+|working\s+)?"
    r"(minutes?|hours?|days?|weeks?)\b",
    r"\bin\s+(a|an|one|two|three|four|five|six|seven|ten|\d+)(\s*-\s*\d+)?\s+(business\s+|working\s+)?"
    r"(hours?|days?|weeks?)\b",
    r"\b\d+\s*(-|to)\s*\d+\s+(business\s+|working\s+)?days\b",
    r"\bby\s+(monday|tuesday|wednesday|thursday|friday|saturday|sunday|tomorrow|tonight|the end of|end of|noon|"
    r"\d{1,2}(st|nd|rd|th)?|next)\b",
    r"\b(today|tomorrow|tonight|overnight|immediately|right away|straight away|same day|this (morning|afternoon|"
    r"evening|week))\b",
    r"\bnext\s+(monday|tuesday|wednesday|thursday|friday|saturday|sunday|week|business day|working day)\b",
    r"\bon\s+(monday|tuesday|wednesday|thursday|friday|saturday|sunday)\b",
    r"\bbefore\s+(it|the \w+|your \w+)\s+(ships|shipped|shipping|is shipped|leaves|left|dispatch\w*)\b",
    r"\bbefore\s+(shipping|dispatch)\b",
)
_VAGUE = _compile(
    r"\blook(ing)?\s+(into|at)\b",
    r"\bget(ting)?\s+back\s+to\s+you\b",
    r"\b(be|get)\s+in\s+touch\b",
    r"\b(is|are|am|'re|'m)\s+(checking|reviewing|investigating|examining|considering|assessing)",
    r"\b(review|investigate|assess|consider)\w*\s+(your|the|this|it)\b",
    r"\bsee what (we|i) can do\b",
    r"\b(as soon as (possible|we can)|asap|in due course|at some point|eventually|when we can|shortly)\b",
    r"\b(we|i)('ll| will)\s+(try|see|let you know)\b",
    r"\b(escalat|pass(ed)? (it|this) on|forward(ed)? (it|this))\w*",
    r"\bsomeone will\b",
)
_EXTERNAL = (
    r"(courier|carrier|bank|card (issuer|company|provider)|manufacturer|maker|post office|postal service|seller|"
    r"retailer|delivery (company|firm|service)|shipping (company|provider)|help (pages?|cent(er|re)|desk)|faq|"
    r"website|support (page|site|portal)|credit card company|payment provider)"
)
_DEFLECT = _compile(
    rf"\b(contact(ing)?|call(ing)?|ask(ing)?|e-?mail(ing)?|reach(ing)? out to|get(ting)? in touch with|"
    rf"speak(ing)? (to|with)|talk(ing)? to|check(ing)?( with)?|visit(ing)?|see|consult(ing)?|try(ing)?)\b"
    rf"[^.!?]{{0,30}}\b(your |the |our |a )?{_EXTERNAL}",
    r"\b(nothing|not (something|anything)) (we|i) can (do|help)\b",
    r"\b(out of|beyond) our (hands|control)\b",
    r"\b(can't|cannot|can not|won't|will not|unable to) help\b",
    r"\bnot (handled|dealt with|done) by us\b",
)


def _next_step_score(response: str) -> float:
    concrete = settled = vague = deflect = False
    for sentence in split_sentences(response):
        if sentence.endswith("?"):
            continue
        if _any(_DEFLECT, sentence):
            deflect = True
            continue
        if _any(_VAGUE, sentence):
            vague = True
            continue
        if _ACTION.search(sentence):
            done, timed = _any(_DONE, sentence), _any(_TIME, sentence)
            if done or timed or _any(_PROMISE, sentence):
                concrete = True
                settled = settled or done or timed
    if concrete:
        score = 1.0 if settled else 0.8
    elif vague:
        score = 0.5
    else:
        score = 0.25
    if deflect:
        score = max(0.0, score - 0.4) if concrete else 0.0
    return score


def next_step(prompts: list[str], responses: list[str]) -> np.ndarray:
    """Does the reply tell the customer what happens next, concretely? 1.0: an action (a verb such
    as sent/refunded/cancelled/ships/arrive) that is already done ("I have refunded", "is
    cancelled", "on its way") or comes with a timeframe ("within five days", "by Friday",
    "today"); 0.8: an action only promised ("we will send a new one"); 0.5: only a vague promise
    ("we'll look into it", "we are reviewing"); 0.25: no step at all; 0.0: a deflection that sends
    the customer elsewhere ("contact the courier", "ask your bank"); a deflection next to a
    concrete step costs 0.4.

    Why: a customer writes to get something done. Vague promises and deflections are the classic
    polite-sounding non-answers that a length- or tone-based judge would reward.
    """
    _check_lengths(prompts, responses)
    return np.array([_next_step_score(r) for r in responses], dtype=float)


# =========================================================================== concise

_FILLER = _compile(
    r"\bvalue\w*\s+(\w+\s+){0,3}(customers?|clients?|business|shoppers?)\b",
    r"\b(customer|client)\s+(satisfaction|experience|happiness|service)\s+(is|means|remains)\b",
    r"\b(is|are|remains?)\s+(very |extremely |really |so |incredibly |truly )?(important|a priority|"
    r"our (top |number one |first )?priority)\s+(to|for)\s+(us|our)\b",
    r"\b(we|i)\s+(always\s+)?(strive|aim|endeavou?r|pride ourselves|are (always )?committed|are dedicated|"
    r"work hard)\s+(to|on|in)\b",
    r"\byour (satisfaction|business|call|message|feedback|custom) (is|means)\b",
    r"\b(at the end of the day|needless to say|as you (may|might) know|rest assured|it goes without saying)\b",
    r"\b(please )?(do not|don't) hesitate to\b",
    r"\b(we|i) hope (this|that) (helps|message|email|finds you)\b",
    r"\bthe (very )?best (possible )?(service|experience|shopping experience)\b",
    r"\b(we|i) (just )?want(ed)? to (say|let you know|assure you) that\b",
    r"\byour experience (with us )?(is|matters)\b",
)
#: Words a reply needs for greeting + facts + next step + closing; beyond it every word is padding.
LENGTH_BUDGET_WORDS = 60
MIN_USEFUL_WORDS = 6


_STOPWORDS = frozenset(
    "a an the is are was were be been am i we you your our it its this that to of for and or so in on at by "
    "with as will has have had just".split()
)


def _content_stems(words: list[str]) -> set[str]:
    """Content words with common suffixes cut ("leaves", "leaving" -> "leav"), so a sentence said
    twice in slightly different words still counts as a repeat."""
    stems = set()
    for w in words:
        if w in _STOPWORDS:
            continue
        for suffix in ("ing", "ed", "es", "s"):
            if w.endswith(suffix) and len(w) - len(suffix) >= 3:
                w = w[: -len(suffix)]
                break
        stems.add(w)
    return stems


def _is_repeat(stems: set[str], earlier: list[set[str]]) -> bool:
    if len(stems) < 3:
        return False
    return any(len(stems & e) / len(stems | e) >= 0.8 for e in earlier)


def _concise_score(response: str) -> float:
    sentences = split_sentences(response)
    seen: list[set[str]] = []
    fillers = repeats = 0
    for sentence in sentences:
        stems = _content_stems(_words(sentence))
        if _is_repeat(stems, seen):
            repeats += 1
        elif _any(_FILLER, sentence):
            fillers += 1
        seen.append(stems)
    n_words = len(_words(response))
    over = max(0, n_words - LENGTH_BUDGET_WORDS) / LENGTH_BUDGET_WORDS
    score = 1.0 - 0.5 * fillers - 0.5 * repeats - min(0.5, over)
    if n_words < MIN_USEFUL_WORDS:  # too short to hold what is needed
        score *= n_words / MIN_USEFUL_WORDS
    return float(min(1.0, max(0.0, score)))


def concise(prompts: list[str], responses: list[str]) -> np.ndarray:
    """Is every sentence pulling its weight? Starts at 1.0 and loses 0.5 per sentence that repeats
    an earlier one (>= 80% overlap of content-word stems, so near-repeats count), 0.5 per boilerplate filler
    sentence ("we value our customers", "X is very important to us", "don't hesitate to ..."), and
    up to 0.5 for length beyond ``LENGTH_BUDGET_WORDS``; replies under ``MIN_USEFUL_WORDS`` words are
    scaled down (too short to say what is needed). Clipped to [0, 1].

    Why: padding and repetition make replies longer without making them better; reward models are
    known to learn "longer is better" (Singhal et al. 2023), so the judge must push the other way.
    """
    _check_lengths(prompts, responses)
    return np.array([_concise_score(r) for r in responses], dtype=float)


# =========================================================================== polite

_GREETING = _compile(r"^\s*(hi|hello|hey|dear|good (morning|afternoon|evening)|greetings|welcome)\b")
_APOLOGY = _compile(
    r"\b(sorry|apologi[sz]e\w*|apologies|regret|unfortunately|i understand|we understand|frustrat\w*|"
    r"inconvenien\w*|that must be|what a (shame|pain))\b"
)
_THANKS = _compile(r"\b(thank|thanks|appreciate\w*|grateful|cheers)\b")
_RUDE = _compile(
    r"\bnot (really |exactly )?(our|my) (problem|fault|responsibility|concern|job|issue)\b",
    r"\byou (should|could|ought to) have\b",
    r"\byour (own )?(fault|problem|mistake)\b",
    r"\b(far |way |so )?too many (messages|complaints|emails|tickets|requests)\b",
    r"\bread (the|our) [\w ]{0,20}(carefully|properly|first)\b",
    r"\b(obviously|clearly you|calm down|stop (complaining|emailing|writing)|deal with it|whatever|don't bother)\b",
    r"\b(as (i|we) (already )?(said|told you)|learn to|that's on you|not our job|waste of (our|my) time)\b",
    r"\b(nonsense|ridiculous|stupid|annoying|pathetic|lazy|useless)\b",
    r"\b(you people|people like you)\b",
    r"\bif you('d| had) (only )?(?!like|prefer|rather|want|wish)\w+ [^.!?]{0,40}"
    r"\b(properly|carefully|yourself|first)\b",
)


def _polite_score(response: str) -> float:
    warmth = (_any(_GREETING, response) + _any(_APOLOGY, response) + _any(_THANKS, response)) / 3
    rude = sum(bool(p.search(s)) for s in split_sentences(response) for p in _RUDE)
    return float(min(1.0, max(0.0, 0.5 + 0.5 * warmth - 0.5 * rude)))


def polite(prompts: list[str], responses: list[str]) -> np.ndarray:
    """Tone: 0.5 for a neutral, curt reply, + 0.5 x the share of {greeting, apology or empathy,
    thanks} present, - 0.5 per rude or blaming line ("not our problem", "you should have read
    ...", "too many messages like this"). Clipped to [0, 1].

    Why: the same facts and the same action land very differently with "Hi Mia, sorry ..." than
    with "You should have read the product page"; blame is the costliest tone error.
    """
    _check_lengths(prompts, responses)
    return np.array([_polite_score(r) for r in responses], dtype=float)


# =========================================================================== reward model


def sigmoid(x: np.ndarray | float) -> np.ndarray:
    """Numerically stable logistic function, elementwise."""
    x = np.asarray(x, dtype=float)
    out = np.empty_like(x)
    pos = x >= 0
    out[pos] = 1.0 / (1.0 + np.exp(-x[pos]))
    e = np.exp(x[~pos])
    out[~pos] = e / (1.0 + e)
    return out


class RewardModelCriterion:
    """A trained reward model as a judge criterion: ``sigmoid(model.score(prompts, responses) / scale)``.

    Works with any object that has ``.score(prompts: list[str], responses: list[str]) -> list[float]``
    (raw rewards on any scale). The sigmoid maps them into [0, 1] like the other criteria; ``scale``
    sets how many reward units make a big difference. Why keep it out of the gold judge? PPO
    optimises this very model; judging PPO with it would grade the policy by its own teacher.
    """

    __name__ = "reward_model"

    def __init__(self, model: Any, scale: float = 1.0):
        if not hasattr(model, "score"):
            raise TypeError(f"{type(model).__name__} has no .score(prompts, responses) method")
        if scale <= 0:
            raise ValueError("scale must be positive")
        self.model = model
        self.scale = scale

    def __call__(self, prompts: list[str], responses: list[str]) -> np.ndarray:
        _check_lengths(prompts, responses)
        raw = np.asarray(self.model.score(list(prompts), list(responses)), dtype=float)
        if raw.shape != (len(responses),):
            raise ValueError(f"reward model returned shape {raw.shape}, expected ({len(responses)},)")
        return sigmoid(raw / self.scale)


#: The built-in criteria by name (the reward-model criterion needs a model: see :func:`judge_with_reward_model`).
BUILTIN_CRITERIA: dict[str, CriterionFn] = {
    "relevance": relevance,
    "facts": facts,
    "next_step": next_step,
    "concise": concise,
    "polite": polite,
}


def describe_criteria(criteria: dict[str, CriterionFn] | None = None) -> Any:
    """A pandas table: each criterion with the first paragraph of its docstring."""
    import pandas as pd

    criteria = criteria or BUILTIN_CRITERIA
    rows = []
    for name, fn in criteria.items():
        doc = (getattr(fn, "__doc__", None) or "").strip().split("\n\n")[0]
        rows.append({"criterion": name, "measures": " ".join(doc.split())})
    return pd.DataFrame(rows).set_index("criterion")


# =========================================================================== the judge


@dataclass
class JudgeConfig:
    """Weights per criterion (0 switches one off), the Bradley-Terry temperature and the tie margin.

    ``temperature`` is in score units: a score difference of one temperature gives P = 0.73, two
    give 0.88. ``tie_margin``: closer scores than this are a tie (no preference label is made).
    """

    weights: dict[str, float] = field(default_factory=lambda: dict(GOLD_WEIGHTS))
    temperature: float = DEFAULT_TEMPERATURE
    tie_margin: float = DEFAULT_TIE_MARGIN

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if self.tie_margin < 0:
            raise ValueError("tie_margin must be >= 0")
        if any(w < 0 for w in self.weights.values()):
            raise ValueError(f"weights must be >= 0: {self.weights}")
        if not any(w > 0 for w in self.weights.values()):
            raise ValueError("at least one criterion needs a positive weight")


@dataclass
class Scores:
    """Scores of a list of replies: the weighted total and every criterion's score."""

    total: np.ndarray
    breakdown: dict[str, np.ndarray]
    weights: dict[str, float]

    def to_frame(self):
        """A pandas DataFrame: one column per criterion, then ``score``."""
        import pandas as pd

        return pd.DataFrame({**self.breakdown, "score": self.total})


@dataclass
class Comparison:
    """The judge's verdicts on pairs (A, B): both scores, P(A better) and 'A' / 'B' / 'tie'."""

    score_a: np.ndarray
    score_b: np.ndarray
    p_a: np.ndarray
    verdict: np.ndarray
    breakdown_a: dict[str, np.ndarray]
    breakdown_b: dict[str, np.ndarray]

    def __len__(self) -> int:
        return len(self.verdict)

    def to_frame(self):
        import pandas as pd

        cols: dict[str, Any] = {"score_a": self.score_a, "score_b": self.score_b}
        cols.update({"p_a": self.p_a, "verdict": self.verdict})
        cols.update({f"a_{k}": v for k, v in self.breakdown_a.items()})
        cols.update({f"b_{k}": v for k, v in self.breakdown_b.items()})
        return pd.DataFrame(cols)


def bradley_terry_probability(score_a: np.ndarray, score_b: np.ndarray, temperature: float) -> np.ndarray:
    """P(A better than B) = sigmoid((s_A - s_B) / temperature): the Bradley-Terry model with each
    reply's strength exp(s / temperature). Swapping A and B gives exactly 1 - P."""
    return sigmoid((np.asarray(score_a, dtype=float) - np.asarray(score_b, dtype=float)) / temperature)


def verdicts(score_a: np.ndarray, score_b: np.ndarray, tie_margin: float) -> np.ndarray:
    """'A', 'B' or 'tie' per pair: a tie when |s_A - s_B| < tie_margin."""
    diff = np.asarray(score_a, dtype=float) - np.asarray(score_b, dtype=float)
    return np.where(np.abs(diff) < tie_margin, "tie", np.where(diff > 0, "A", "B"))


class Judge:
    """A weighted combination of criteria with a Bradley-Terry pairwise verdict.

    ``criteria`` maps names to functions ``f(prompts, responses) -> scores in [0, 1]``; every
    name with a positive weight in ``config.weights`` must be there. Criteria with weight 0 are
    not computed at all (so dropping ``relevance`` also skips the embedding model).
    """

    def __init__(self, config: JudgeConfig | None = None, criteria: dict[str, CriterionFn] | None = None):
        self.config = config or JudgeConfig()
        self.criteria = dict(BUILTIN_CRITERIA if criteria is None else criteria)
        missing = [n for n, w in self.config.weights.items() if w > 0 and n not in self.criteria]
        if missing:
            raise ValueError(f"no criterion named {missing}; known: {sorted(self.criteria)}")

    @property
    def active(self) -> dict[str, float]:
        """The criteria that count, with their weights."""
        return {n: w for n, w in self.config.weights.items() if w > 0}

    def with_weights(self, **weights: float) -> Judge:
        """A copy with some weights changed (``judge.with_weights(relevance=0)`` drops relevance)."""
        return Judge(replace(self.config, weights={**self.config.weights, **weights}), self.criteria)

    def with_criterion(self, name: str, fn: CriterionFn, weight: float = 1.0) -> Judge:
        """A copy with one more (or a replaced) criterion: how to plug in your own."""
        return Judge(replace(self.config, weights={**self.config.weights, name: weight}), {**self.criteria, name: fn})

    def score(self, prompts: Sequence[str], responses: Sequence[str]) -> Scores:
        """Score every (prompt, reply): s = sum_c w_c f_c(prompt, reply) / sum_c w_c, in [0, 1]."""
        prompts, responses = list(prompts), list(responses)
        _check_lengths(prompts, responses)
        breakdown = {}
        for name in self.active:
            values = np.asarray(self.criteria[name](prompts, responses), dtype=float)
            if values.shape != (len(responses),):
                raise ValueError(f"criterion {name!r} returned shape {values.shape}, expected ({len(responses)},)")
            if len(values) and (np.isnan(values).any() or values.min() < 0 or values.max() > 1):
                raise ValueError(f"criterion {name!r} returned values outside [0, 1]")
            breakdown[name] = values
        weights = self.active
        total = sum(weights[n] * breakdown[n] for n in weights) / sum(weights.values())
        return Scores(np.asarray(total, dtype=float).reshape(len(responses)), breakdown, dict(weights))

    def compare(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> Comparison:
        """Judge pairs: scores, P(A better) = sigmoid((s_A - s_B) / T), verdicts with ties.

        A and B are scored in one batch (each reply on its own, never seeing the other), so the
        verdict cannot depend on which reply is shown first.
        """
        prompts, a, b = list(prompts), list(responses_a), list(responses_b)
        if not len(prompts) == len(a) == len(b):
            raise ValueError(f"need equal lengths, got {len(prompts)} prompts, {len(a)} A and {len(b)} B replies")
        both = self.score(prompts + prompts, a + b)
        n = len(a)
        s_a, s_b = both.total[:n], both.total[n:]
        return Comparison(
            score_a=s_a,
            score_b=s_b,
            p_a=bradley_terry_probability(s_a, s_b, self.config.temperature),
            verdict=verdicts(s_a, s_b, self.config.tie_margin),
            breakdown_a={k: v[:n] for k, v in both.breakdown.items()},
            breakdown_b={k: v[n:] for k, v in both.breakdown.items()},
        )

    def __repr__(self) -> str:
        cfg = self.config
        return f"Judge(weights={self.active}, temperature={cfg.temperature}, tie_margin={cfg.tie_margin})"


def rubric_judge(**weights: float) -> Judge:
    """The course's rubric judge: the five built-in criteria, no reward model. Used to label pairs
    (AI feedback) and to evaluate PPO policies on the course data, so it must not share anything with
    the reward model."""
    return Judge(JudgeConfig(weights={**GOLD_WEIGHTS, **weights}))


def gold_judge(**weights: float) -> Judge:
    """The gold judge of the current data folder, the one notebooks 04-06 grade policies with.

    On the course data: the rubric judge (:func:`rubric_judge`; ``weights`` change its criteria). On your
    own data the rubric measures nothing (its criteria are a support reply's), so this returns the
    domain-free judge of :mod:`rlhf_helpers.gold_judge`: an independent reward model trained on the held-out
    half of the human preference pairs (``weights`` are then not allowed). Both are :class:`Judge` objects:
    ``.score(prompts, replies)``, ``.compare(prompts, replies_a, replies_b)``, ``win_rate(..., judge)``."""
    from rlhf_helpers.config import on_course_data

    if on_course_data():
        return rubric_judge(**weights)
    if weights:
        raise ValueError(
            f"criterion weights {sorted(weights)} apply to the course's rubric judge; on custom data the gold judge "
            "is the held-out reward model (use rubric_judge(...) to weight the rubric criteria anyway)"
        )
    from rlhf_helpers.gold_judge import heldout_gold_judge

    return heldout_gold_judge()


def judge_with_reward_model(
    reward_model: Any, weight: float = REWARD_MODEL_WEIGHT, scale: float = 1.0, config: JudgeConfig | None = None
) -> Judge:
    """The gold judge's criteria plus the reward model's score (see :class:`RewardModelCriterion`)."""
    config = config or JudgeConfig()
    criteria = {**BUILTIN_CRITERIA, "reward_model": RewardModelCriterion(reward_model, scale)}
    return Judge(replace(config, weights={**config.weights, "reward_model": weight}), criteria)


# =========================================================================== use 1: AI feedback


def label_pairs(
    prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str], judge: Judge | None = None
) -> list[dict]:
    """The judge's verdict on every pair, ties included: one dict per pair with ``prompt``,
    ``response_a``, ``response_b``, ``verdict`` ('A'/'B'/'tie'), ``p_a``, ``score_a``, ``score_b``
    and every criterion's score as ``a_<criterion>`` / ``b_<criterion>``."""
    judge = judge or gold_judge()
    cmp = judge.compare(prompts, responses_a, responses_b)
    rows = []
    for i, (p, a, b) in enumerate(zip(prompts, responses_a, responses_b)):
        row = {
            "prompt": p,
            "response_a": a,
            "response_b": b,
            "verdict": str(cmp.verdict[i]),
            "p_a": float(cmp.p_a[i]),
            "score_a": float(cmp.score_a[i]),
            "score_b": float(cmp.score_b[i]),
        }
        row.update({f"a_{k}": float(v[i]) for k, v in cmp.breakdown_a.items()})
        row.update({f"b_{k}": float(v[i]) for k, v in cmp.breakdown_b.items()})
        rows.append(row)
    return rows


def to_preference_rows(labelled: list[dict], names: tuple[str, str] = ("A", "B")) -> tuple[list[dict], int]:
    """Turn :func:`label_pairs` output into preference rows (ties dropped); returns (rows, ties).

    Each row: ``prompt, chosen, rejected`` (the columns ``load_records(..., "preferences")`` reads),
    ``judge_probability`` (P(chosen better)), ``judge_margin`` (s_chosen - s_rejected),
    ``chosen_from`` (which side won, named by ``names``) and ``judge_chosen_<c>`` / ``judge_rejected_<c>``.
    The ``judge_`` prefix keeps them apart from the course data's 0-2 rubric columns.
    """
    rows, ties = [], 0
    for r in labelled:
        if r["verdict"] == "tie":
            ties += 1
            continue
        win, lose = ("a", "b") if r["verdict"] == "A" else ("b", "a")
        crits = [k[2:] for k in r if k.startswith("a_")]
        row = {
            "prompt": r["prompt"],
            "chosen": r[f"response_{win}"],
            "rejected": r[f"response_{lose}"],
            "judge_probability": r["p_a"] if win == "a" else 1.0 - r["p_a"],
            "judge_margin": r[f"score_{win}"] - r[f"score_{lose}"],
            "chosen_from": names[0] if win == "a" else names[1],
        }
        row.update({f"judge_chosen_{c}": r[f"{win}_{c}"] for c in crits})
        row.update({f"judge_rejected_{c}": r[f"{lose}_{c}"] for c in crits})
        rows.append(row)
    return rows, ties


@dataclass
class LabelSummary:
    """What :func:`write_preference_file` did: pairs judged, rows written, ties dropped, where."""

    path: Path
    n_pairs: int
    n_written: int
    n_ties: int
    chosen_counts: dict[str, int]
    labelled: list[dict] = field(repr=False, default_factory=list)

    def as_dict(self) -> dict:
        return {
            "path": str(self.path),
            "n_pairs": self.n_pairs,
            "n_written": self.n_written,
            "n_ties": self.n_ties,
            "chosen_counts": self.chosen_counts,
        }


def write_preference_file(
    prompts: Sequence[str],
    responses_a: Sequence[str],
    responses_b: Sequence[str],
    out_path: str | Path,
    judge: Judge | None = None,
    names: tuple[str, str] = ("A", "B"),
) -> LabelSummary:
    """Judge any response pairs and write the preference dataset (JSONL, atomically; ties dropped).

    The file loads with ``load_records(out_path, "preferences")`` and can train the reward model.
    """
    from rlhf_helpers.io_utils import atomic_write_jsonl

    labelled = label_pairs(prompts, responses_a, responses_b, judge)
    rows, ties = to_preference_rows(labelled, names)
    path = atomic_write_jsonl(out_path, rows)
    counts = {names[0]: sum(r["chosen_from"] == names[0] for r in rows), names[1]: 0}
    counts[names[1]] = len(rows) - counts[names[0]]
    return LabelSummary(path, len(labelled), len(rows), ties, counts, labelled)


def label_seed_rows(rows: Any, out_path: str | Path, judge: Judge | None = None) -> LabelSummary:
    """AI feedback for the seed project's format: ``{prompt, human_answer, machine_answer}`` rows
    (a list of dicts, a ``datasets.Dataset`` or a path) become a judge-labelled preference file.

    The two answers are an *unlabelled* pair: the judge decides which is better, and equally good
    answers are dropped as ties. A path is loaded with ``load_records(path, "preferences")``, which
    maps ``human_answer`` -> ``chosen`` and ``machine_answer`` -> ``rejected``; we undo that naming.
    """
    if isinstance(rows, (str, Path)):
        from rlhf_helpers.data_loading import load_records

        ds = load_records(rows, "preferences")
        prompts, human, machine = ds["prompt"], ds["chosen"], ds["rejected"]
    else:
        rows = list(rows)
        prompts = [r["prompt"] for r in rows]
        human = [r["human_answer"] for r in rows]
        machine = [r["machine_answer"] for r in rows]
    return write_preference_file(prompts, human, machine, out_path, judge, names=("human_answer", "machine_answer"))


def is_seed_format(source: str | Path) -> bool:
    """True when the file's rows are ``{prompt, human_answer, machine_answer}`` (no ``chosen``)."""
    from rlhf_helpers.data_loading import read_rows

    for _, raw in read_rows(source, []):
        return isinstance(raw, dict) and "human_answer" in raw and "machine_answer" in raw and "chosen" not in raw
    return False


# =========================================================================== use 2: gold judge of policies


@dataclass
class WinRate:
    """Win rate of model A over model B on a prompt set (ties count half) and the per-prompt verdicts."""

    rate: float
    wins: int
    losses: int
    ties: int
    verdicts: Any  # pandas DataFrame: prompt, response_a, response_b, verdict, p_a, scores

    @property
    def n(self) -> int:
        return self.wins + self.losses + self.ties

    def as_dict(self) -> dict:
        return {"win_rate": self.rate, "wins": self.wins, "losses": self.losses, "ties": self.ties, "n": self.n}


def win_rate(
    prompts: Sequence[str],
    responses_model_a: Sequence[str],
    responses_model_b: Sequence[str],
    judge: Judge | None = None,
) -> WinRate:
    """How often the judge prefers model A's reply to model B's on the same prompt:
    (wins + ties / 2) / n. With the gold judge this evaluates a PPO policy against the SFT one
    without asking the reward model that PPO optimised."""
    import pandas as pd

    labelled = label_pairs(prompts, responses_model_a, responses_model_b, judge or gold_judge())
    frame = pd.DataFrame(labelled)
    wins = int((frame["verdict"] == "A").sum()) if len(frame) else 0
    losses = int((frame["verdict"] == "B").sum()) if len(frame) else 0
    ties = len(frame) - wins - losses
    rate = (wins + 0.5 * ties) / len(frame) if len(frame) else float("nan")
    return WinRate(rate, wins, losses, ties, frame)


# =========================================================================== quality checks


def cohen_kappa(labels_1: Sequence[str], labels_2: Sequence[str]) -> float:
    """Cohen's kappa: agreement beyond chance, (p_o - p_e) / (1 - p_e), over the union of labels.

    Why not plain accuracy? If one side always said "A" and A was right 90% of the time, accuracy
    would be 0.9 and kappa 0: kappa credits only agreement that chance would not produce.
    """
    labels_1, labels_2 = list(labels_1), list(labels_2)
    if len(labels_1) != len(labels_2) or not labels_1:
        raise ValueError("need two non-empty label lists of the same length")
    cats = sorted(set(labels_1) | set(labels_2))
    n = len(labels_1)
    p_o = sum(x == y for x, y in zip(labels_1, labels_2)) / n
    p_e = sum((labels_1.count(c) / n) * (labels_2.count(c) / n) for c in cats)
    return 1.0 if p_e == 1 else (p_o - p_e) / (1 - p_e)


def random_order(n: int, seed: int = 0) -> np.ndarray:
    """Seeded coin flips: True where the pair is shown swapped (rejected as A)."""
    return np.random.default_rng(seed).random(n) < 0.5


def agreement_report(
    judge: Judge,
    prompts: Sequence[str],
    chosen: Sequence[str],
    rejected: Sequence[str],
    seed: int = 0,
    rubric: dict[str, Sequence[tuple[float, float]]] | None = None,
) -> dict:
    """How well the judge agrees with known preference labels.

    * ``agreement``: share of pairs where the judge prefers ``chosen`` (a tie counts as a miss).
    * ``kappa``: Cohen's kappa between the true label ('A'/'B') and the judge's ('A'/'B'/'tie')
      with each pair shown in a seeded random order, so both classes occur.
    * ``confusion``: counts[true][judged] for that random-order presentation.
    * ``criterion_agreement`` (when ``rubric`` gives per-criterion (chosen, rejected) scores, as the
      course data's ``chosen_<c>``/``rejected_<c>`` columns): on pairs that differ on criterion c,
      how often the judge's criterion c orders them the same way. ``criterion_alone``: the share of
      pairs where criterion c alone prefers ``chosen``.
    """
    prompts, chosen, rejected = list(prompts), list(chosen), list(rejected)
    direct = judge.compare(prompts, chosen, rejected)
    swap = random_order(len(prompts), seed)
    a = [r if s else c for c, r, s in zip(chosen, rejected, swap)]
    b = [c if s else r for c, r, s in zip(chosen, rejected, swap)]
    shown = judge.compare(prompts, a, b)
    truth = np.where(swap, "B", "A")
    confusion = {t: {j: int(((truth == t) & (shown.verdict == j)).sum()) for j in VERDICTS} for t in ("A", "B")}
    report = {
        "n": len(prompts),
        "agreement": float((direct.verdict == "A").mean()),
        "tie_rate": float((direct.verdict == "tie").mean()),
        "kappa": cohen_kappa(list(truth), list(shown.verdict)),
        "accuracy_random_order": float((shown.verdict == truth).mean()),
        "confusion": confusion,
        "criterion_alone": {
            c: float((direct.breakdown_a[c] > direct.breakdown_b[c]).mean()) for c in direct.breakdown_a
        },
    }
    if rubric:
        per = {}
        for c, pairs in rubric.items():
            if c not in direct.breakdown_a:
                continue
            true_diff = np.array([x - y for x, y in pairs], dtype=float)
            judged = direct.breakdown_a[c] - direct.breakdown_b[c]
            differ = true_diff != 0
            if differ.any():
                per[c] = float((np.sign(judged[differ]) == np.sign(true_diff[differ])).mean())
        report["criterion_agreement"] = per
    return report


def position_consistency(
    judge: Judge, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]
) -> dict:
    """Judge every pair as (A, B) and again as (B, A). Consistent when P(A>B) = 1 - P(B>A) (to
    1e-9) and the verdict mirrors (A <-> B, tie stays tie). LLM judges often fail this (they
    favour the first answer, Zheng et al. 2023); a judge that scores each reply alone cannot."""
    fwd = judge.compare(prompts, responses_a, responses_b)
    bwd = judge.compare(prompts, responses_b, responses_a)
    mirror = {"A": "B", "B": "A", "tie": "tie"}
    prob_ok = np.abs(fwd.p_a - (1.0 - bwd.p_a)) <= 1e-9
    verdict_ok = np.array([mirror[v] == w for v, w in zip(fwd.verdict, bwd.verdict)], dtype=bool)
    ok = prob_ok & verdict_ok
    return {
        "position_consistency": float(ok.mean()) if len(ok) else float("nan"),
        "n": int(len(ok)),
        "max_probability_gap": float(np.abs(fwd.p_a - (1.0 - bwd.p_a)).max()) if len(ok) else 0.0,
        "first_position_preferred": float((fwd.verdict == "A").mean() + (bwd.verdict == "A").mean()) / 2
        if len(ok)
        else float("nan"),
    }


def plot_confusion(confusion: dict[str, dict[str, int]], title: str = "judge vs. course labels"):
    """Confusion-matrix plot (matplotlib) of :func:`agreement_report`'s ``confusion``."""
    import matplotlib.pyplot as plt

    rows = list(confusion)
    cols = list(VERDICTS)
    m = np.array([[confusion[r].get(c, 0) for c in cols] for r in rows])
    fig, ax = plt.subplots(figsize=(4.2, 3.2))
    ax.imshow(m, cmap="Blues")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, str(m[i, j]), ha="center", va="center", color="white" if m[i, j] > m.max() / 2 else "black")
    ax.set(
        xticks=range(len(cols)),
        xticklabels=[f"judge: {c}" for c in cols],
        yticks=range(len(rows)),
        yticklabels=[f"label: {r} better" for r in rows],
        title=title,
    )
    fig.tight_layout()
    return fig


def rubric_columns(ds: Any) -> dict[str, list[tuple[float, float]]] | None:
    """Per-criterion (chosen, rejected) rubric scores from the course data's columns, if present."""
    from rlhf_helpers.course_data import CRITERIA

    names = getattr(ds, "column_names", None) or []
    if not all(f"chosen_{c}" in names and f"rejected_{c}" in names for c in CRITERIA):
        return None
    return {c: list(zip(ds[f"chosen_{c}"], ds[f"rejected_{c}"])) for c in CRITERIA}


# =========================================================================== the stage, for the CLI and the notebook

#: File name of the judge-labelled seed rows (AI feedback) under :func:`judger_dir`.
AI_FEEDBACK_FILE = "ai_feedback_preferences.jsonl"


def judger_dir() -> Path:
    """``<artifacts>/judger``: where notebook 04 writes its AI-feedback preference file."""
    from rlhf_helpers.config import artifacts_dir

    return artifacts_dir() / "judger"


def load_reward_judge(path: str | Path, config: JudgeConfig | None = None) -> Judge:
    """The judge with the reward-model criterion, from a saved reward model (``rlhf_helpers.reward``).

    Raises ImportError when the reward module is not available and FileNotFoundError when no
    model is saved at ``path``."""
    from rlhf_helpers.reward import load_reward_model

    return judge_with_reward_model(load_reward_model(path), config=config)


def run_judge_stage(
    pairs: str | Path,
    out_dir: str | Path,
    judge: Judge | None = None,
    seed: int | None = None,
) -> dict:
    """Judge a pair file and write ``out_dir/labelled_pairs.jsonl`` and ``out_dir/metrics.json``.

    ``pairs`` is a preference file (prompt/chosen/rejected) or seed-format rows. For a preference
    file the labels are the truth to agree with; for seed rows the human answer plays that part
    (about a fifth of the machine answers are as good, so agreement is lower by design and the
    judge should call those ties). Raises ``DataValidationError`` on bad input.
    """
    from rlhf_helpers.config import course_seed
    from rlhf_helpers.data_loading import load_records
    from rlhf_helpers.report import record_metrics

    start = time.perf_counter()
    judge = judge or gold_judge()
    seed = course_seed() if seed is None else seed
    seed_format = is_seed_format(pairs)
    ds = load_records(pairs, "preferences")
    prompts, first, second = ds["prompt"], ds["chosen"], ds["rejected"]
    names = ("human_answer", "machine_answer") if seed_format else ("chosen", "rejected")
    out_dir = Path(out_dir)
    summary = write_preference_file(prompts, first, second, out_dir / "labelled_pairs.jsonl", judge, names)
    report = agreement_report(judge, prompts, first, second, seed=seed, rubric=rubric_columns(ds))
    swap = random_order(len(prompts), seed)
    a = [y if s else x for x, y, s in zip(first, second, swap)]
    b = [x if s else y for x, y, s in zip(first, second, swap)]
    position = position_consistency(judge, prompts, a, b)
    metrics = {
        "format": "seed" if seed_format else "preferences",
        "source": str(pairs),
        "n": report["n"],
        "agreement": report["agreement"],
        "kappa": report["kappa"],
        "tie_rate": report["tie_rate"],
        "position_consistency": position["position_consistency"],
        "max_probability_gap": position["max_probability_gap"],
        "confusion": report["confusion"],
        "criterion_alone": report["criterion_alone"],
        "n_written": summary.n_written,
        "n_ties": summary.n_ties,
        "chosen_counts": summary.chosen_counts,
        "labelled_pairs": str(summary.path),
        "weights": judge.active,
        "temperature": judge.config.temperature,
        "tie_margin": judge.config.tie_margin,
    }
    if "criterion_agreement" in report:
        metrics["criterion_agreement"] = report["criterion_agreement"]
    metrics["seconds"] = round(time.perf_counter() - start, 2)
    record_metrics("judger", metrics, out_dir=out_dir)
    return metrics
