"""A small English question/answer corpus, generated from templates: what the built-in ``n3-tiny`` learns to speak.

Every example is a ``(question, answer)`` pair. The base model is pretrained on ``question + "\\n" + answer + EOS``,
the same text format the training core uses (``data.format_text``), so a policy built on ``n3-tiny`` answers on the
line after the prompt and then stops. Teammates also use these pairs as toy prompts and benchmarks.

Generated rather than shipped: a few hundred facts times a few phrasings each give thousands of distinct, correct
dialogues, and the same code always yields the same list (no file to keep in sync, no randomness but a seeded RNG).
"""
from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

# --- facts -------------------------------------------------------------------------------------------------------

CAPITALS = {
    "France": "Paris", "Germany": "Berlin", "Italy": "Rome", "Spain": "Madrid", "Portugal": "Lisbon",
    "Japan": "Tokyo", "China": "Beijing", "India": "New Delhi", "Egypt": "Cairo", "Kenya": "Nairobi",
    "Canada": "Ottawa", "Mexico": "Mexico City", "Brazil": "Brasilia", "Argentina": "Buenos Aires", "Peru": "Lima",
    "Russia": "Moscow", "Norway": "Oslo", "Sweden": "Stockholm", "Finland": "Helsinki", "Denmark": "Copenhagen",
    "Poland": "Warsaw", "Austria": "Vienna", "Greece": "Athens", "Ireland": "Dublin", "Belgium": "Brussels",
    "the Netherlands": "Amsterdam", "Switzerland": "Bern", "Turkey": "Ankara", "Australia": "Canberra",
    "New Zealand": "Wellington", "South Korea": "Seoul", "Thailand": "Bangkok", "Vietnam": "Hanoi",
    "Chile": "Santiago", "Colombia": "Bogota", "Morocco": "Rabat", "Nigeria": "Abuja", "Ghana": "Accra",
    "Hungary": "Budapest", "the United Kingdom": "London", "the United States": "Washington",
}

COLOURS = {
    "the sky": "blue", "grass": "green", "a banana": "yellow", "snow": "white", "coal": "black",
    "a ripe tomato": "red", "an orange": "orange", "a lemon": "yellow", "milk": "white", "a leaf": "green",
    "the sea": "blue", "a strawberry": "red", "chocolate": "brown", "a carrot": "orange", "an emerald": "green",
    "a cloud": "white", "a crow": "black", "a plum": "purple", "a flamingo": "pink", "the sun": "yellow",
}

# animal: (sound, legs, home, group)
ANIMALS = {
    "dog": ("barks", 4, "a kennel", "mammal"), "cat": ("meows", 4, "a house", "mammal"),
    "cow": ("moos", 4, "a barn", "mammal"), "horse": ("neighs", 4, "a stable", "mammal"),
    "sheep": ("bleats", 4, "a field", "mammal"), "pig": ("oinks", 4, "a sty", "mammal"),
    "duck": ("quacks", 2, "a pond", "bird"), "owl": ("hoots", 2, "a tree", "bird"),
    "lion": ("roars", 4, "the savanna", "mammal"), "frog": ("croaks", 4, "a pond", "amphibian"),
    "bee": ("buzzes", 6, "a hive", "insect"), "snake": ("hisses", 0, "the grass", "reptile"),
    "mouse": ("squeaks", 4, "a hole", "mammal"), "wolf": ("howls", 4, "the forest", "mammal"),
    "chicken": ("clucks", 2, "a coop", "bird"), "spider": ("makes no sound", 8, "a web", "arachnid"),
    "bear": ("growls", 4, "a den", "mammal"), "goat": ("bleats", 4, "a farm", "mammal"),
    "ant": ("makes no sound", 6, "a nest", "insect"), "crow": ("caws", 2, "a tree", "bird"),
}

DEFINITIONS = {
    "a river": "a large stream of water that flows to the sea",
    "a mountain": "a very high hill with steep sides",
    "a library": "a place where people can read and borrow books",
    "a doctor": "a person who helps sick people get better",
    "a teacher": "a person who helps students learn",
    "a computer": "a machine that stores and works with information",
    "a bridge": "a road built over a river or a valley",
    "a clock": "a tool that shows the time",
    "a kitchen": "a room where people cook food",
    "an island": "a piece of land with water all around it",
    "a farmer": "a person who grows food and keeps animals",
    "a map": "a drawing that shows where places are",
    "a planet": "a large round body that moves around a star",
    "a forest": "a large area covered with trees",
    "a desert": "a dry place with very little rain",
    "rain": "water that falls from the clouds",
    "a baker": "a person who makes bread and cakes",
    "a week": "seven days in a row",
    "a year": "twelve months, or about three hundred and sixty five days",
    "a friend": "a person you like and trust",
    "a song": "a short piece of music with words",
    "a garden": "a piece of land where people grow flowers or vegetables",
    "a letter": "a written message sent to someone",
    "a city": "a large town where many people live",
    "a school": "a place where children go to learn",
}

HOW_TO = {
    "make tea": "Boil water, pour it over a tea bag, wait three minutes, then remove the bag.",
    "boil an egg": "Put the egg in boiling water for about eight minutes, then cool it in cold water.",
    "wash your hands": "Wet your hands, rub them with soap for twenty seconds, then rinse and dry them.",
    "plant a seed": "Put the seed in soft soil, cover it lightly, and water it every day.",
    "make toast": "Put a slice of bread in the toaster and wait until it is golden.",
    "tie a knot": "Cross the two ends, pass one end under the other, and pull both ends tight.",
    "send a letter": "Write the address on the envelope, add a stamp, and put it in a mailbox.",
    "save money": "Spend less than you earn and put a little aside every month.",
    "learn a new word": "Read it, say it out loud, and use it in a sentence the same day.",
    "sleep better": "Go to bed at the same time every night and keep your room dark and quiet.",
    "cross the street": "Stop at the curb, look left and right, and cross when the road is clear.",
    "make a salad": "Wash some lettuce and vegetables, cut them up, and mix them with a little oil.",
    "clean a window": "Spray it with soapy water, wipe it with a cloth, and dry it with paper.",
    "start a fire safely": "Clear the ground, stack dry wood, light the small twigs, and keep water close by.",
    "write a letter": "Start with a greeting, say what you want to say, and end with your name.",
    "find north": "Look at a compass, or find the sun at noon, which is in the south.",
    "read a book faster": "Read in a quiet place, follow the lines with your finger, and do not reread.",
    "keep a plant alive": "Give it water when the soil is dry and put it near a window with light.",
    "stay calm": "Breathe in slowly, count to four, and breathe out slowly.",
    "make a paper plane": "Fold a sheet of paper in half, fold the corners to the middle, and fold the wings down.",
}

OPPOSITES = {
    "hot": "cold", "big": "small", "fast": "slow", "happy": "sad", "up": "down", "day": "night",
    "open": "closed", "old": "new", "light": "dark", "full": "empty", "early": "late", "high": "low",
    "hard": "soft", "wet": "dry", "strong": "weak", "rich": "poor", "loud": "quiet", "long": "short",
    "near": "far", "first": "last",
}

NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
]

# --- templates ---------------------------------------------------------------------------------------------------
# Each generator yields (question, answer); several phrasings per fact so the model learns the facts, not one string.


def _capitals() -> Iterator[tuple[str, str]]:
    for country, city in CAPITALS.items():
        yield f"What is the capital of {country}?", f"The capital of {country} is {city}."
        yield f"Which city is the capital of {country}?", f"{city} is the capital of {country}."
        yield f"Tell me the capital of {country}.", f"It is {city}."
        yield f"Is {city} the capital of {country}?", f"Yes, {city} is the capital of {country}."


def _arithmetic() -> Iterator[tuple[str, str]]:
    for a in range(13):
        for b in range(13):
            yield f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
            yield f"What is {a} + {b}?", f"{a} + {b} = {a + b}."
            yield f"What is {a} times {b}?", f"{a} times {b} is {a * b}."
            if a >= b:
                yield f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    for n in range(1, 13):
        yield f"How do you write {n} in words?", f"{n} is written {NUMBER_WORDS[n]}."
        yield f"What number comes after {n}?", f"{n + 1} comes after {n}."
        yield f"Is {n} even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}."


def _colours() -> Iterator[tuple[str, str]]:
    for thing, colour in COLOURS.items():
        yield f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {colour}."
        yield f"What is the colour of {thing}?", f"The colour of {thing} is {colour}."
        yield f"Is {thing} {colour}?", f"Yes, {thing} is {colour}."


def _animals() -> Iterator[tuple[str, str]]:
    for animal, (sound, legs, home, group) in ANIMALS.items():
        article = "an" if animal[0] in "aeiou" else "a"
        legs_text = "no legs" if legs == 0 else f"{NUMBER_WORDS[legs]} legs"
        yield f"What sound does {article} {animal} make?", f"{article.capitalize()} {animal} {sound}."
        yield f"How many legs does {article} {animal} have?", f"{article.capitalize()} {animal} has {legs_text}."
        yield f"Where does {article} {animal} live?", f"{article.capitalize()} {animal} lives in {home}."
        yield f"What kind of animal is {article} {animal}?", f"{article.capitalize()} {animal} is {'an' if group[0] in 'aeiou' else 'a'} {group}."
        yield f"Tell me about the {animal}.", (
            f"The {animal} is {'an' if group[0] in 'aeiou' else 'a'} {group} with {legs_text}. It lives in {home}.")


def _definitions() -> Iterator[tuple[str, str]]:
    for word, meaning in DEFINITIONS.items():
        bare = word.split(" ", 1)[-1]
        yield f"What is {word}?", f"{word[0].upper() + word[1:]} is {meaning}."
        yield f"What does the word {bare} mean?", f"The word {bare} means {meaning}."
        yield f"Define {bare}.", f"{word[0].upper() + word[1:]} is {meaning}."


def _how_to() -> Iterator[tuple[str, str]]:
    for task, steps in HOW_TO.items():
        yield f"How do I {task}?", steps
        yield f"How can I {task}?", steps
        yield f"Can you tell me how to {task}?", f"Sure. {steps}"


def _opposites() -> Iterator[tuple[str, str]]:
    for word, opposite in OPPOSITES.items():
        yield f"What is the opposite of {word}?", f"The opposite of {word} is {opposite}."
        yield f"What is the opposite of {opposite}?", f"The opposite of {opposite} is {word}."


def _small_talk() -> Iterator[tuple[str, str]]:
    yield "Hello!", "Hello! How can I help you today?"
    yield "Hi there.", "Hi! What would you like to know?"
    yield "How are you?", "I am fine, thank you. How can I help?"
    yield "What is your name?", "I am a small assistant. I answer simple questions."
    yield "Thank you.", "You are welcome."
    yield "Thanks for your help.", "You are welcome. Ask me anything else."
    yield "Goodbye.", "Goodbye! Have a nice day."
    yield "Can you help me?", "Yes, of course. What do you need?"
    for day_index, day in enumerate(["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]):
        following = ["Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday", "Monday"][day_index]
        yield f"What day comes after {day}?", f"{following} comes after {day}."
    for month_index, month in enumerate(
            ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
             "November", "December"]):
        yield f"Which month is number {month_index + 1}?", f"Month number {month_index + 1} is {month}."


_GENERATORS = (_capitals, _arithmetic, _colours, _animals, _definitions, _how_to, _opposites, _small_talk)

# One example in this many goes to the held-out split (chosen by a stable hash of the question, not by position).
_HELDOUT_EVERY = 10


def _all_examples() -> list[tuple[str, str]]:
    """Every distinct dialogue, in generation order (duplicates removed, first kept)."""
    seen: dict[str, str] = {}
    for generate in _GENERATORS:
        for question, answer in generate():
            seen.setdefault(question, answer)
    return list(seen.items())


def _is_heldout(question: str) -> bool:
    return zlib.crc32(question.encode("utf-8")) % _HELDOUT_EVERY == 0


def corpus_examples(n: int | None = None, seed: int = 0, *, split: str = "all") -> list[tuple[str, str]]:
    """``(question, answer)`` pairs, shuffled by ``seed``; the same arguments always give the same list.

    ``n=None`` returns every distinct example of the split (a few thousand); a larger ``n`` than that repeats the
    examples, reshuffled each pass. ``split`` is ``"all"``, ``"train"`` (what ``n3-tiny`` is pretrained on) or
    ``"heldout"`` (about 10 %, never seen in pretraining: measure generalisation on these).
    """
    if split not in ("all", "train", "heldout"):
        raise ValueError(f"split must be 'all', 'train' or 'heldout', not {split!r}")
    if n is not None and n < 0:
        raise ValueError(f"n must be >= 0, not {n}")
    examples = _all_examples()
    if split != "all":
        keep_heldout = split == "heldout"
        examples = [ex for ex in examples if _is_heldout(ex[0]) == keep_heldout]
    rng = random.Random(seed)
    wanted = len(examples) if n is None else n
    out: list[tuple[str, str]] = []
    while len(out) < wanted:
        batch = examples[:]
        rng.shuffle(batch)
        out.extend(batch[: wanted - len(out)])
    return out
