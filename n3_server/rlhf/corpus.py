"""A small English question/answer corpus, generated from templates: what the built-in ``n3-tiny`` learns to speak.

Every example is a ``(question, answer)`` pair. The base model is pretrained on ``question + "\\n" + answer + EOS``,
the same text format the training core uses (``data.format_text``), so a policy built on ``n3-tiny`` answers on the
line after the prompt and then stops. Tests and benchmarks use the pairs as toy prompts too.

Generated rather than shipped: a few hundred facts times a few phrasings each give about 1,700 distinct, correct
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

# country: (language, continent)
COUNTRIES = {
    "France": ("French", "Europe"), "Germany": ("German", "Europe"), "Italy": ("Italian", "Europe"),
    "Spain": ("Spanish", "Europe"), "Portugal": ("Portuguese", "Europe"), "Japan": ("Japanese", "Asia"),
    "China": ("Chinese", "Asia"), "Egypt": ("Arabic", "Africa"), "Kenya": ("Swahili", "Africa"),
    "Mexico": ("Spanish", "North America"), "Brazil": ("Portuguese", "South America"),
    "Argentina": ("Spanish", "South America"), "Peru": ("Spanish", "South America"), "Russia": ("Russian", "Europe"),
    "Norway": ("Norwegian", "Europe"), "Sweden": ("Swedish", "Europe"), "Finland": ("Finnish", "Europe"),
    "Poland": ("Polish", "Europe"), "Greece": ("Greek", "Europe"), "Turkey": ("Turkish", "Asia"),
    "Australia": ("English", "Oceania"), "South Korea": ("Korean", "Asia"), "Thailand": ("Thai", "Asia"),
    "Vietnam": ("Vietnamese", "Asia"), "Chile": ("Spanish", "South America"), "Hungary": ("Hungarian", "Europe"),
    "the United Kingdom": ("English", "Europe"), "the United States": ("English", "North America"),
    "Canada": ("English and French", "North America"), "the Netherlands": ("Dutch", "Europe"),
}

# food: (kind, colour, taste)
FOODS = {
    "an apple": ("fruit", "red or green", "sweet"), "a pear": ("fruit", "green", "sweet"),
    "a grape": ("fruit", "green or purple", "sweet"), "a cherry": ("fruit", "red", "sweet"),
    "a lemon": ("fruit", "yellow", "sour"), "a lime": ("fruit", "green", "sour"),
    "a peach": ("fruit", "orange", "sweet"), "a mango": ("fruit", "orange", "sweet"),
    "a carrot": ("vegetable", "orange", "sweet"), "a potato": ("vegetable", "brown", "plain"),
    "an onion": ("vegetable", "white", "sharp"), "a cucumber": ("vegetable", "green", "fresh"),
    "a pepper": ("vegetable", "red or green", "mild"), "a cabbage": ("vegetable", "green", "plain"),
    "a pumpkin": ("vegetable", "orange", "sweet"), "broccoli": ("vegetable", "green", "bitter"),
}

TOOLS = {
    "a hammer": "to hit nails into wood", "a knife": "to cut food", "a broom": "to sweep the floor",
    "a pen": "to write on paper", "a spoon": "to eat soup", "a key": "to open a lock",
    "a ladder": "to reach high places", "an umbrella": "to stay dry in the rain", "a saw": "to cut wood",
    "a towel": "to dry yourself", "a needle": "to sew cloth", "a shovel": "to dig holes",
    "a comb": "to tidy your hair", "a cup": "to drink water", "a bucket": "to carry water",
    "a phone": "to call people", "a camera": "to take photos", "a watch": "to tell the time",
}

JOBS = {
    "a pilot": "flies planes", "a chef": "cooks food in a restaurant", "a nurse": "cares for sick people",
    "a builder": "builds houses", "a driver": "drives cars or buses", "a painter": "paints pictures or walls",
    "a police officer": "keeps people safe", "a firefighter": "puts out fires", "a dentist": "looks after teeth",
    "a vet": "looks after sick animals", "a writer": "writes books and stories", "a singer": "sings songs",
    "a gardener": "looks after gardens", "a postman": "brings letters to houses", "a judge": "decides cases in court",
    "a scientist": "studies how the world works", "a cleaner": "keeps places clean", "a tailor": "makes clothes",
}

PLURALS = {
    "cat": "cats", "dog": "dogs", "mouse": "mice", "child": "children", "man": "men", "woman": "women",
    "foot": "feet", "tooth": "teeth", "box": "boxes", "city": "cities", "leaf": "leaves", "knife": "knives",
    "baby": "babies", "bus": "buses", "goose": "geese", "person": "people", "fish": "fish", "sheep": "sheep",
    "book": "books", "house": "houses", "wolf": "wolves", "glass": "glasses", "story": "stories", "day": "days",
}

# animal sizes, smallest first: "which is bigger" compares two of them
SIZES = ["ant", "bee", "spider", "mouse", "frog", "rabbit", "cat", "dog", "sheep", "pig", "lion", "horse",
         "bear", "cow", "giraffe", "elephant", "whale"]

UNITS = [
    ("days", "a week", 7), ("hours", "a day", 24), ("minutes", "an hour", 60), ("seconds", "a minute", 60),
    ("months", "a year", 12), ("weeks", "a year", 52), ("days", "a year", 365), ("legs", "a chair", 4),
    ("wheels", "a bicycle", 2), ("wheels", "a car", 4), ("sides", "a triangle", 3), ("sides", "a square", 4),
    ("colours", "a rainbow", 7), ("players", "a football team", 11), ("fingers", "one hand", 5),
    ("continents", "the world", 7), ("letters", "the English alphabet", 26), ("years", "a century", 100),
]

SEASONS = {
    "winter": "cold, and in many places it snows",
    "spring": "mild, and flowers begin to grow",
    "summer": "warm and sunny, and the days are long",
    "autumn": "cool, and the leaves fall from the trees",
}

NUMBER_WORDS = [
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
]

# --- templates ---------------------------------------------------------------------------------------------------
# Each generator yields (question, answer); several phrasings per fact so the model learns the facts, not one string.


def _cap(text: str) -> str:
    """Capitalise the first letter only ("the sky" -> "The sky"; str.capitalize would lower the rest)."""
    return text[:1].upper() + text[1:]


def _a(noun: str) -> str:
    return ("an " if noun[0] in "aeiou" else "a ") + noun


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
            yield f"What is {a} times {b}?", f"{a} times {b} is {a * b}."
            if a >= b:
                yield f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    for n in range(1, 13):
        yield f"How do you write {n} in words?", f"{n} is written {NUMBER_WORDS[n]}."
        yield f"What number comes after {n}?", f"{n + 1} comes after {n}."
        yield f"Is {n} even or odd?", f"{n} is {'even' if n % 2 == 0 else 'odd'}."


def _colours() -> Iterator[tuple[str, str]]:
    for thing, colour in COLOURS.items():
        yield f"What colour is {thing}?", f"{_cap(thing)} is {colour}."
        yield f"What is the colour of {thing}?", f"The colour of {thing} is {colour}."
        yield f"Is {thing} {colour}?", f"Yes, {thing} is {colour}."


def _animals() -> Iterator[tuple[str, str]]:
    for animal, (sound, legs, home, group) in ANIMALS.items():
        legs_text = "no legs" if legs == 0 else f"{NUMBER_WORDS[legs]} legs"
        yield f"What sound does {_a(animal)} make?", f"{_cap(_a(animal))} {sound}."
        yield f"How many legs does {_a(animal)} have?", f"{_cap(_a(animal))} has {legs_text}."
        yield f"Where does {_a(animal)} live?", f"{_cap(_a(animal))} lives in {home}."
        yield f"What kind of animal is {_a(animal)}?", f"{_cap(_a(animal))} is {_a(group)}."
        yield f"Tell me about the {animal}.", f"The {animal} is {_a(group)} with {legs_text}. It lives in {home}."


def _definitions() -> Iterator[tuple[str, str]]:
    for word, meaning in DEFINITIONS.items():
        bare = word.split(" ", 1)[-1]
        yield f"What is {word}?", f"{_cap(word)} is {meaning}."
        yield f"What does the word {bare} mean?", f"The word {bare} means {meaning}."
        yield f"Define {bare}.", f"{_cap(word)} is {meaning}."


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


def _countries() -> Iterator[tuple[str, str]]:
    for country, (language, continent) in COUNTRIES.items():
        yield f"What language do people speak in {country}?", f"People in {country} speak {language}."
        yield f"Which language is spoken in {country}?", f"{language} is spoken in {country}."
        yield f"Which continent is {country} in?", f"{_cap(country)} is in {continent}."
        yield f"Where is {country}?", f"{_cap(country)} is a country in {continent}."


def _foods() -> Iterator[tuple[str, str]]:
    for food, (kind, colour, taste) in FOODS.items():
        name = food.split(" ", 1)[-1]
        other = "vegetable" if kind == "fruit" else "fruit"
        yield f"Is {food} a fruit or a vegetable?", f"{_cap(food)} is a {kind}."
        yield f"Is {food} a {other}?", f"No, {food} is a {kind}, not a {other}."
        yield f"What does {food} taste like?", f"{_cap(food)} tastes {taste}."
        yield f"What colour is {food}?", f"{_cap(food)} is {colour}."
        yield f"Tell me about the {name}.", f"The {name} is a {kind}. It is {colour} and tastes {taste}."


def _tools_and_jobs() -> Iterator[tuple[str, str]]:
    for tool, use in TOOLS.items():
        yield f"What do you use {tool} for?", f"You use {tool} {use}."
        yield f"What is {tool} for?", f"{_cap(tool)} is used {use}."
        yield f"What do I need {use}?", f"You need {tool}."
    for job, work in JOBS.items():
        yield f"What does {job} do?", f"{_cap(job)} {work}."
        yield f"Who {work}?", f"{_cap(job)} {work}."


def _words() -> Iterator[tuple[str, str]]:
    for word, plural in PLURALS.items():
        yield f"What is the plural of {word}?", f"The plural of {word} is {plural}."
        yield f"How do you say more than one {word}?", f"One {word}, two {plural}."
        yield f"How do you spell {word}?", f"You spell it {'-'.join(word.upper())}."


def _sizes() -> Iterator[tuple[str, str]]:
    for i, small in enumerate(SIZES):
        for big in SIZES[i + 1:]:
            yield f"Which is bigger, {_a(small)} or {_a(big)}?", f"{_cap(_a(big))} is bigger than {_a(small)}."
            yield f"Which is smaller, {_a(big)} or {_a(small)}?", f"{_cap(_a(small))} is smaller than {_a(big)}."


def _counts_and_seasons() -> Iterator[tuple[str, str]]:
    for unit, whole, count in UNITS:
        yield f"How many {unit} are in {whole}?", f"There are {count} {unit} in {whole}."
        yield f"How many {unit} does {whole} have?", f"{_cap(whole)} has {count} {unit}."
    for season, weather in SEASONS.items():
        yield f"What is the weather like in {season}?", f"In {season} it is {weather}."
        yield f"Tell me about {season}.", f"{season.capitalize()} is a season. It is {weather}."


_GENERATORS = (
    _capitals, _countries, _arithmetic, _colours, _animals, _foods, _sizes, _definitions, _tools_and_jobs, _words,
    _how_to, _opposites, _counts_and_seasons, _small_talk,
)

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

    ``n=None`` returns every distinct example of the split (1,667 in all: 1,495 train, 172 held out); a larger
    ``n`` repeats them, reshuffled each pass. ``split`` is ``"all"``, ``"train"`` (what ``n3-tiny`` is pretrained on) or
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
