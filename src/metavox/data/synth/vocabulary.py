"""The built-in vocabulary: common English words, with fixed meta-validation and meta-test
words so that the default protocol tests on words never seen in meta-training.

No two words are homophones in any of the eight accents used (checked with eSpeak NG's own
phoneme transcription), and no word is an inflection of another.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

__all__ = [
    "COMMANDS",
    "NUMBERS",
    "NOUNS",
    "VERBS",
    "ADJECTIVES",
    "OTHER",
    "WORDS",
    "TEST_WORDS",
    "VAL_WORDS",
    "TRAIN_WORDS",
    "word_split",
    "check_words",
]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


#: Device and assistant commands, including the Speech Commands core words.
COMMANDS = _words("""
    yes no up down left right on off stop go start pause play open close back next forward
    backward faster slower louder quiet cancel help repeat search call answer send save delete
    undo enter exit select wait hold skip follow learn
""")
#: The ten digits and a few common numbers.
NUMBERS = _words("zero one two three four five six seven eight nine ten eleven twelve twenty"
                 " fifty hundred")
#: Everyday nouns.
NOUNS = _words("""
    house door window table chair bed kitchen garden water coffee bread apple orange banana lemon
    sugar milk cheese butter egg rice soup dog cat bird horse fish mouse tiger monkey rabbit car
    bus train bicycle ticket money phone computer camera music picture paper pencil book letter
    bottle glass cup plate knife spoon shirt shoe jacket hat bag key box clock lamp radio doctor
    teacher friend mother father baby city village river mountain island forest beach tree flower
    grass rain snow wind cloud sun moon star morning evening night tomorrow yesterday weather
    family school office hospital market street bridge airport station animal
""")
#: Everyday verbs.
VERBS = _words("""
    eat drink sleep walk run jump sit stand sing dance speak listen look watch find give take bring
    buy sell push pull carry throw catch cook clean wash drive fly swim build climb laugh smile
    think remember forget teach travel visit begin wake turn move show
""")
#: Colours and common adjectives.
ADJECTIVES = _words("""
    red blue green yellow black white brown purple pink big small hot cold happy sad good bad new
    young early late dark bright warm soft empty full heavy easy funny tired hungry
""")
#: Greetings and other frequent words.
OTHER = _words("hello goodbye please thanks sorry okay maybe always never again today wow")

#: All built-in words, in a fixed order (the generation order).
WORDS: tuple[str, ...] = COMMANDS + NUMBERS + NOUNS + VERBS + ADJECTIVES + OTHER

#: Words reserved for meta-test: never used in meta-training or meta-validation.
TEST_WORDS: tuple[str, ...] = _words("""
    answer cancel forward repeat select skip three eight twelve apple bicycle bridge cheese doctor
    garden island kitchen monkey pencil rabbit river spoon ticket weather window build carry dance
    jump listen remember swim throw purple heavy hungry yellow goodbye maybe sorry
""")
#: Words reserved for meta-validation (model selection, early stopping).
VAL_WORDS: tuple[str, ...] = _words("""
    louder pause search wait six fifty camera cloud horse jacket lemon market mountain shirt
    village climb cook laugh sing visit bright funny always hello
""")
#: The meta-training words: all the others.
TRAIN_WORDS: tuple[str, ...] = tuple(
    w for w in WORDS if w not in set(TEST_WORDS) | set(VAL_WORDS)
)

_WORD_RE = re.compile(r"^[a-z]+(?:-[a-z]+)*$")


def word_split(word: str) -> str:
    """``"test"``, ``"val"`` or ``"train"``: the role of ``word`` in the default protocol
    (words outside the built-in vocabulary count as training words)."""
    if word in TEST_WORDS:
        return "test"
    if word in VAL_WORDS:
        return "val"
    return "train"


def check_words(words: Iterable[str]) -> tuple[str, ...]:
    """Validate a word list: lower-case ASCII letters (hyphens inside allowed), no empty
    entries, no duplicates; order kept. Raises ``ValueError`` naming the bad entries."""
    out = tuple(str(w).strip() for w in words)
    if not out:
        raise ValueError("the word list is empty")
    empty = [i for i, w in enumerate(out) if not w]
    if empty:
        raise ValueError(f"the word list has empty entries (at positions {empty[:5]})")
    bad = [w for w in out if not _WORD_RE.match(w)]
    if bad:
        raise ValueError(
            f"words must be lower-case ASCII letters (hyphens inside allowed): {bad[:5]}"
        )
    dups = sorted(w for w, n in Counter(out).items() if n > 1)
    if dups:
        raise ValueError(f"the word list repeats {dups[:5]}")
    return out
