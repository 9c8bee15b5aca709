"""Deterministic generator of the course's own dataset: support replies for a fictional shop.

Why a generated dataset? The course must run offline and the reward model, judger and PPO need
responses whose quality varies along *known* axes, so that every stage has something real to learn
and every improvement can be checked. Each customer ticket has hard facts (name, order number,
product, amount, ...) and one of eight issue types, each with its own concrete resolution. A good
reply uses the facts correctly, gives the concrete next step, is concise, and is polite; degraded
replies break one or more of those four rubric criteria in graded ways.

Run ``python data/make_dataset.py`` (or :func:`write_course_dataset`) to regenerate ``data/``;
the same seed always gives byte-identical files.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_helpers.io_utils import atomic_write_jsonl

#: The four rubric criteria, each scored 0 (bad), 1 (partly) or 2 (good). See data/README.md.
CRITERIA: tuple[str, ...] = ("facts", "next_step", "concise", "polite")
MAX_CRITERION_SCORE = 2

FIRST_NAMES = [
    "Mia",
    "Noah",
    "Ava",
    "Liam",
    "Zoe",
    "Omar",
    "Lena",
    "Ravi",
    "Sofia",
    "Jonas",
    "Aisha",
    "Mateo",
    "Chloe",
    "Kenji",
    "Nora",
    "Hugo",
    "Priya",
    "Ethan",
    "Lucia",
    "Felix",
    "Amara",
    "Tom",
    "Ines",
    "Yusuf",
    "Clara",
    "Diego",
    "Hana",
    "Leo",
    "Maya",
    "Sam",
    "Elif",
    "Marco",
    "Julia",
    "Kofi",
    "Ella",
    "Arjun",
    "Rosa",
    "Finn",
    "Leila",
    "Ben",
]
COLOURS = ["blue", "red", "green", "black", "white", "grey", "yellow", "oak", "steel", "pink"]
PRODUCTS = [
    ("kettle", "lid"),
    ("toaster", "crumb tray"),
    ("desk lamp", "bulb"),
    ("coffee grinder", "blade"),
    ("rice cooker", "inner pot"),
    ("blender", "jug"),
    ("bookshelf", "shelf pins"),
    ("office chair", "wheel"),
    ("backpack", "strap"),
    ("yoga mat", "carry strap"),
    ("water bottle", "cap"),
    ("frying pan", "handle"),
    ("throw blanket", "storage bag"),
    ("wall clock", "battery cover"),
    ("bath towel set", "hand towel"),
    ("teapot", "strainer"),
    ("side table", "leg"),
    ("plant pot", "saucer"),
    ("alarm clock", "power cable"),
    ("picture frame", "glass panel"),
    ("cutting board", "feet"),
    ("laundry basket", "lid"),
    ("umbrella", "sleeve"),
    ("headphones", "ear cushion"),
]
WEEKDAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday"]
CITIES = ["Leeds", "Porto", "Lyon", "Bremen", "Cork", "Turin", "Malmo", "Ghent", "Bilbao", "Graz"]

ISSUES = ("damaged", "late", "wrong_item", "refund", "double_charge", "cancel", "address", "missing_part")

# Customer messages per issue type. Several phrasings so the model must read, not memorise.
MESSAGES: dict[str, list[str]] = {
    "damaged": [
        "My {product} arrived broken. What can you do?",
        "The {product} I received is cracked and unusable.",
        "Hi, the box was crushed and the {product} inside is damaged.",
        "My new {product} came with a dent and does not work.",
    ],
    "late": [
        "My {product} still has not arrived. Where is it?",
        "It has been two weeks and no {product}. Can you check?",
        "Hello, my order with the {product} is late. Any news?",
        "The {product} was due days ago and nothing came.",
    ],
    "wrong_item": [
        "I ordered a {product} but got something else.",
        "You sent me the wrong item instead of my {product}.",
        "The parcel had a different product, not the {product} I paid for.",
        "Hi, I received someone else's item, not my {product}.",
    ],
    "refund": [
        "I want to return the {product} and get my {amount} back.",
        "The {product} is not what I expected. Please refund my {amount}.",
        "Can I get a refund of {amount} for the {product}?",
        "I would like my money back for the {product}, it was {amount}.",
    ],
    "double_charge": [
        "I was charged {amount} twice for my {product}.",
        "My card shows two payments of {amount} for one {product}.",
        "Hi, you billed me twice, {amount} each, for the {product}.",
        "There is a duplicate charge of {amount} for my {product} order.",
    ],
    "cancel": [
        "Please cancel my order for the {product}.",
        "I changed my mind about the {product}, can you cancel it?",
        "Hi, I need to cancel the {product} before it ships.",
        "I ordered the {product} by mistake. Please cancel.",
    ],
    "address": [
        "I moved. Please send the {product} to my new address in {city}.",
        "Can you change the delivery address for my {product} to {city}?",
        "Hi, the {product} should go to {city}, not my old address.",
        "Please update my shipping address to {city} for the {product}.",
    ],
    "missing_part": [
        "My {product} arrived without the {part}.",
        "The {part} is missing from my {product}.",
        "Hi, I got the {product} but there was no {part} in the box.",
        "The {product} came but the {part} was not included.",
    ],
}

# The concrete next step for each issue: the heart of a good reply (criterion ``next_step``).
NEXT_STEPS: dict[str, list[str]] = {
    "damaged": [
        "I have sent a free replacement {product}, which ships within two business days.",
        "A replacement {product} is on its way and ships within two business days.",
    ],
    "late": [
        "Tracking shows it at your local depot, and it will arrive by {weekday}.",
        "The courier has it at your local depot, so it will reach you by {weekday}.",
    ],
    "wrong_item": [
        "I have emailed you a prepaid return label, and the correct {product} ships today.",
        "The correct {product} ships today, and a prepaid return label is in your email.",
    ],
    "refund": [
        "I have refunded {amount} to your original payment method; it shows within five days.",
        "Your refund of {amount} is on its way to your original payment method within five days.",
    ],
    "double_charge": [
        "I have reversed the duplicate charge of {amount}; it leaves your statement within five days.",
        "The second charge of {amount} is reversed and will drop off your statement within five days.",
    ],
    "cancel": [
        "I have cancelled the order before it shipped, and you will not be charged.",
        "The order is cancelled before shipping, so no payment will be taken.",
    ],
    "address": [
        "I have updated the delivery address to {city}, and the parcel will go there.",
        "The delivery address is now {city}, and the courier has the change.",
    ],
    "missing_part": [
        "I have sent the missing {part} separately, and it arrives within three days.",
        "The missing {part} ships separately today and arrives within three days.",
    ],
}

# Vague or deflecting "steps" (criterion next_step = 1 or 0).
VAGUE_STEPS = [
    "We will look into it and get back to you.",
    "Our team is checking this for you.",
    "We are reviewing your request.",
]
DEFLECTIONS = [
    "Please contact the courier about this.",
    "You could try asking your bank.",
    "Please check our help pages.",
]
ISSUE_PHRASES = {
    "damaged": "arrived damaged",
    "late": "is running late",
    "wrong_item": "was not what you ordered",
    "refund": "needs a refund",
    "double_charge": "was charged twice",
    "cancel": "needs to be cancelled",
    "address": "needs a new address",
    "missing_part": "arrived incomplete",
}
OPENINGS = [
    "Hi {name}, I am sorry your {product} (order #{order}) {issue_phrase}.",
    "Hello {name}, sorry to hear your {product} from order #{order} {issue_phrase}.",
]
CLOSINGS = ["Thank you for your patience.", "Thanks for letting us know.", "Thank you for shopping with us."]
CURT_OPENINGS = ["Order #{order}, {product}: noted.", "Re order #{order} ({product})."]
RUDE_LINES = [
    "This is not really our problem.",
    "You should have read the product page more carefully.",
    "We get far too many messages like this.",
]
FILLER = [
    "We always value our customers and their experience.",
    "Customer satisfaction is very important to us here.",
]


@dataclass
class Ticket:
    """One customer request with the facts a correct reply must use."""

    name: str
    order: str
    product: str
    part: str
    issue: str
    amount: str
    weekday: str
    city: str
    message: str = field(default="")

    def facts(self) -> dict[str, str]:
        return {
            "name": self.name,
            "order": self.order,
            "product": self.product,
            "part": self.part,
            "amount": self.amount,
            "weekday": self.weekday,
            "city": self.city,
            "issue_phrase": ISSUE_PHRASES[self.issue],
        }

    @property
    def prompt(self) -> str:
        """The text the policy sees: the facts as fields plus the customer's own words."""
        return (
            f"Reply to the customer. Customer: {self.name}. Order: #{self.order}. "
            f"Product: {self.product}. Message: {self.message}"
        )


def _make_ticket(rng: random.Random, order: str) -> Ticket:
    base, part = rng.choice(PRODUCTS)
    ticket = Ticket(
        name=rng.choice(FIRST_NAMES),
        order=order,
        product=f"{rng.choice(COLOURS)} {base}",
        part=part,
        issue=rng.choice(ISSUES),
        amount=f"${rng.randint(12, 240)}",
        weekday=rng.choice(WEEKDAYS),
        city=rng.choice(CITIES),
    )
    ticket.message = rng.choice(MESSAGES[ticket.issue]).format(**ticket.facts())
    return ticket


@dataclass
class Response:
    """A reply together with the rubric scores that describe it (the ground truth of its quality)."""

    text: str
    scores: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.scores.values())


def _wrong_facts(rng: random.Random, ticket: Ticket, amount_visible: bool) -> dict[str, str]:
    """The ticket's facts with one changed (order digit, colour or amount): a reply written from
    them states a wrong fact. Only facts the reply will actually show are changed."""
    facts = ticket.facts()
    key = rng.choice(["order", "product"] + (["amount"] if amount_visible else []))
    if key == "order":
        digits = list(ticket.order)
        i = rng.randrange(len(digits))
        digits[i] = str((int(digits[i]) + rng.randint(1, 9)) % 10)
        facts["order"] = "".join(digits)
    elif key == "product":
        others = [c for c in COLOURS if not ticket.product.startswith(c + " ")]
        facts["product"] = f"{rng.choice(others)} {ticket.product.split(' ', 1)[1]}"
    else:
        facts["amount"] = f"${int(ticket.amount[1:]) + rng.randint(5, 60)}"
    return facts


def make_response(rng: random.Random, ticket: Ticket, target: dict[str, int] | None = None) -> Response:
    """Write a reply whose rubric scores equal ``target`` (all 2 = a reference-quality reply).

    Each criterion maps to one controlled change of the text:
    ``facts`` 2 = every fact right, 1 = the order number left out, 0 = a wrong fact;
    ``next_step`` 2 = the issue's concrete step, 1 = a vague promise, 0 = a deflection;
    ``concise`` 2 = no filler, 1 = one filler sentence, 0 = filler plus a repeated sentence;
    ``polite`` 2 = greeting, apology and thanks, 1 = curt, 0 = rude.
    """
    target = dict(target or {c: MAX_CRITERION_SCORE for c in CRITERIA})
    amount_visible = target["next_step"] == 2 and ticket.issue in ("refund", "double_charge")
    facts = ticket.facts() if target["facts"] > 0 else _wrong_facts(rng, ticket, amount_visible)

    if target["facts"] == 1:  # a fact left out: the opening names neither order number nor product
        opening = "Hi {name}, I am sorry about the problem with your order." if target["polite"] == 2 else "Noted."
    elif target["polite"] == 2:
        opening = rng.choice(OPENINGS)
    else:
        opening = rng.choice(CURT_OPENINGS)
    sentences = [opening.format(**facts)]

    if target["next_step"] == 2:
        step = rng.choice(NEXT_STEPS[ticket.issue]).format(**facts)
    elif target["next_step"] == 1:
        step = rng.choice(VAGUE_STEPS)
    else:
        step = rng.choice(DEFLECTIONS)
    sentences.append(step)

    if target["concise"] <= 1:
        sentences.insert(1, rng.choice(FILLER))
    if target["concise"] == 0:
        sentences.append(sentences[-1])  # the classic failure: saying the same thing twice
        sentences.append(rng.choice([f for f in FILLER if f not in sentences]))

    if target["polite"] == 2:
        sentences.append(rng.choice(CLOSINGS))
    elif target["polite"] == 0:
        sentences.insert(1, rng.choice(RUDE_LINES))
    return Response(" ".join(sentences), target)


def _random_degradation(rng: random.Random) -> dict[str, int]:
    """Rubric scores of a degraded reply: one to three criteria lowered, by one or two points."""
    target = {c: MAX_CRITERION_SCORE for c in CRITERIA}
    for criterion in rng.sample(CRITERIA, rng.choice([1, 1, 2, 2, 3])):
        target[criterion] = rng.choice([0, 1])
    return target


#: How often the support team's demonstrations (the SFT data) fall short of the reference: 70% carry
#: a line of corporate filler ("We always value our customers and their experience."), a real habit
#: of support logs; facts, next step and tone are right. This is the situation of Stiennon et al.
#: 2020, whose labellers preferred RLHF summaries to the human reference summaries: SFT imitates its
#: demonstrations, habits included, while the preference pairs say that filler makes a reply worse,
#: so RL has room to go beyond imitation. Other habits can be switched on for experiments, e.g.
#: ``{"next_step": 0.6}`` (vague promises), which gave a larger PPO gain but dragged SFT's ROUGE-L
#: against the reference replies down to 0.31.
DEFAULT_DEMO_FLAW_RATES: dict[str, float] = {"concise": 0.7}


def demonstration_target(rng: random.Random, flaw_rates: dict[str, float]) -> dict[str, int]:
    """Rubric scores of one team-written demonstration: each criterion in ``flaw_rates`` drops
    from 2 to 1 with its probability."""
    target = {c: MAX_CRITERION_SCORE for c in CRITERIA}
    for criterion, rate in flaw_rates.items():
        if rng.random() < rate:
            target[criterion] = MAX_CRITERION_SCORE - 1
    return target


def _order_numbers(rng: random.Random, n: int) -> list[str]:
    """Distinct order numbers: they make every prompt unique, so splits by prompt cannot leak."""
    return [str(x) for x in rng.sample(range(10000, 99999), n)]


@dataclass
class CourseDataset:
    sft: list[dict]
    preferences: list[dict]
    eval: list[dict]
    seed_format: list[dict]


def _preference_row(ticket: Ticket, a: Response, b: Response) -> dict:
    chosen, rejected = (a, b) if a.total > b.total else (b, a)
    row = {"prompt": ticket.prompt, "chosen": chosen.text, "rejected": rejected.text, "issue": ticket.issue}
    for c in CRITERIA:
        row[f"chosen_{c}"] = chosen.scores[c]
    for c in CRITERIA:
        row[f"rejected_{c}"] = rejected.scores[c]
    row["decided_by"] = ",".join(c for c in CRITERIA if chosen.scores[c] != rejected.scores[c])
    return row


def generate_course_dataset(
    seed: int = 0,
    n_sft: int = 1200,
    n_pref_prompts: int = 640,
    pairs_per_prompt: tuple[int, int] = (2, 3),
    n_eval: int = 250,
    n_seed_format: int = 300,
    demo_flaw_rates: dict[str, float] | None = None,
) -> CourseDataset:
    """Build every split from one seed. Splits use disjoint tickets (distinct order numbers).
    ``demo_flaw_rates``: see :data:`DEFAULT_DEMO_FLAW_RATES` (``{}``: reference-quality demonstrations)."""
    flaw_rates = DEFAULT_DEMO_FLAW_RATES if demo_flaw_rates is None else demo_flaw_rates
    rng = random.Random(seed)
    orders = iter(_order_numbers(rng, n_sft + n_pref_prompts + n_eval + n_seed_format))

    # Each ticket gets a reference-quality reply; the demonstration is that reply unless the agent
    # fell into one of the team's habits (demo_flaw_rates). The habits come from their own random
    # stream, so the other splits do not depend on how often the team falls short.
    demo_rng = random.Random(f"demonstrations-{seed}")
    sft = []
    for _ in range(n_sft):
        t = _make_ticket(rng, next(orders))
        demo = make_response(rng, t)
        target = demonstration_target(demo_rng, flaw_rates)
        if target != demo.scores:
            demo = make_response(demo_rng, t, target)
        sft.append({"prompt": t.prompt, "response": demo.text, "issue": t.issue})

    preferences = []
    for _ in range(n_pref_prompts):
        t = _make_ticket(rng, next(orders))
        for _ in range(rng.randint(*pairs_per_prompt)):
            # Half the pairs pit the reference against a degraded reply; half pit two degraded
            # replies against each other, so the reward model must learn graded quality.
            while True:
                a = make_response(rng, t) if rng.random() < 0.5 else make_response(rng, t, _random_degradation(rng))
                b = make_response(rng, t, _random_degradation(rng))
                if a.total != b.total:
                    break
            first, second = (a, b) if rng.random() < 0.5 else (b, a)
            preferences.append(_preference_row(t, first, second))

    evaluation = []
    for _ in range(n_eval):
        t = _make_ticket(rng, next(orders))
        evaluation.append({"prompt": t.prompt, "reference": make_response(rng, t).text, "issue": t.issue})

    seed_rows = []
    for _ in range(n_seed_format):
        t = _make_ticket(rng, next(orders))
        human = make_response(rng, t)
        # The "machine" answer is of mixed quality: sometimes as good as the human one (a tie for
        # the judger to detect), mostly degraded.
        machine = human
        while machine.text == human.text:  # identical texts would not be a pair at all
            good = rng.random() < 0.2
            machine = make_response(rng, t) if good else make_response(rng, t, _random_degradation(rng))
        seed_rows.append({"prompt": t.prompt, "human_answer": human.text, "machine_answer": machine.text})
    return CourseDataset(sft, preferences, evaluation, seed_rows)


#: File names of the committed dataset under ``data/``.
DATA_FILES = {
    "sft": "sft.jsonl",
    "preferences": "preferences.jsonl",
    "eval": "eval.jsonl",
    "seed_format": "seed_format.jsonl",
}


def write_course_dataset(data_dir: Path, seed: int = 0) -> dict[str, int]:
    """Write all splits as JSONL (atomically) and return their sizes."""
    ds = generate_course_dataset(seed=seed)
    sizes = {}
    for split, filename in DATA_FILES.items():
        rows = getattr(ds, split)
        atomic_write_jsonl(Path(data_dir) / filename, rows)
        sizes[split] = len(rows)
    return sizes
