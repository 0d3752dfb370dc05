"""The text of synthetic requests and responses: a fixed pool of sentences built from an English-ish
vocabulary, code snippets and system prompts, so that the encoded records compress like real traffic.

The pools are built once per process from a fixed seed (about a second); a `TextSource` then draws text
of a given size from them with two random numbers, however long the text. The vocabulary deliberately
contains none of the credential marker strings ("authorization", "api-key", "cookie"), so records without
credential headers never trip the exporter's slow path.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from math import exp

from .catalogue import words

__all__ = ["NORMAL_BITS", "TextPools", "TextSource", "text_pools"]

POOL_WORDS = 800_000
NORMAL_BITS = 13  # the log-normal draws use a table of 2**13 standard normals
MAX_STRIDE = 61

_VOCAB = words(
    """
the of and to a in is that for it as with on be this by are you or from at not can we your an have will
if more which all was do but has use when so one their they what these also other how each new data code
function should need file some any time make than like only into then its them may our would there used
value first using example user list set test error case type class call return first output input model
request response system service server client message string number result object field method change
update create read write run build check value line start end state name key table query index cache log
event version support service node cluster config option default path directory module package import
function variable parameter argument loop condition branch commit review merge issue bug fix feature
release deploy container image pod network storage bucket record batch export store retry timeout limit
rate window token prompt completion context answer question summary report document section paragraph
analysis plan step task goal problem solution approach detail reason because however therefore although
while before after during between under over through without within across around against among toward
please could would might must shall here where why who whom whose because quite very just still even
well good better best simple clear quick small large long short high low main important possible
different similar specific general common current previous next last same own real true false open close
private public local remote static dynamic async sync parallel serial internal external initial final
total customer account invoice payment order product price discount shipping address email phone contact
team project meeting schedule calendar week month year today tomorrow morning evening note draft comment
idea describe explain compare translate rewrite improve refactor optimize validate parse format convert
generate extract classify summarize list show find search filter sort group count measure estimate
python rust golang typescript javascript kubernetes docker postgres sqlite redis kafka terraform helm
api endpoint schema payload header body json yaml csv parquet s3 http grpc tcp dns tls ssh git linux
thread process memory disk cpu latency throughput bandwidth queue worker scheduler controller operator
policy rule permission role group tenant region zone replica shard partition snapshot backup restore
"""
)

_CONNECTORS = ["and", "but", "so", "because", "while", "which", "although", "then", "or"]
_ENDS = [".", ".", ".", ".", ".", ".", "?", "!", ":", "."]

_IDENTS = words(
    """
items records batch cursor client store bucket result payload config options retries timeout limit
offset total count index value key name path prefix start end window user session request response
"""
)
_FUNCS = words(
    """
load_config parse_records fetch_batch write_object compute_total validate_spec retry_with_backoff
encode_body decode_sequence export_once read_cursor build_key purge_expired list_objects upload_part
"""
)


@dataclass(frozen=True)
class TextPools:
    sentences: list[str]
    avg_sentence: int  # average length of a sentence with its separator
    code_lines: list[str]
    system_prompts: list[str]
    normals: list[float]


_POOLS: TextPools | None = None


def text_pools() -> TextPools:
    """The pools, built on first use and shared by every generator of the process."""
    global _POOLS
    if _POOLS is None:
        _POOLS = _build_pools()
    return _POOLS


def _build_pools() -> TextPools:
    rng = random.Random(0x5EED)
    sentences = _sentences(rng)
    avg = sum(len(s) + 1 for s in sentences) // len(sentences)
    normals = [rng.gauss(0.0, 1.0) for _ in range(1 << NORMAL_BITS)]
    code_lines = [_code_line(rng) for _ in range(20_000)]
    # System prompts: a few dozen per deployment, reused across sessions (so they compress).
    system_prompts = []
    for _ in range(48):
        size = int(rng.lognormvariate(5.6, 0.7))
        k = max(2, size // avg)
        system_prompts.append(
            "You are a helpful assistant for the platform team. " + " ".join(rng.choices(sentences, k=k))
        )
    return TextPools(sentences, avg, code_lines, system_prompts, normals)


def _sentences(rng: random.Random) -> list[str]:
    # A Zipf-ish word stream: each word repeated in proportion to its weight, then drawn uniformly.
    population = [w for rank, w in enumerate(_VOCAB) for _ in range(max(1, int(400 / (rank + 2.7) ** 1.07)))]
    stream = rng.choices(population, k=POOL_WORDS)
    sentences: list[str] = []
    pos = 0
    randint, random_ = rng.randint, rng.random
    while pos < len(stream) - 40:
        length = randint(5, 24)
        words = stream[pos : pos + length]
        pos += length
        if length > 10 and random_() < 0.45:
            cut = randint(3, length - 3)
            words[cut - 1] += ","
            if random_() < 0.5:
                words.insert(cut, _CONNECTORS[randint(0, len(_CONNECTORS) - 1)])
        text = " ".join(words)
        text = text[0].upper() + text[1:] + _ENDS[randint(0, len(_ENDS) - 1)]
        if random_() < 0.08:
            text += "\n\n"
        elif random_() < 0.03:
            text = "- " + text + "\n"
        sentences.append(text)
    return sentences


def _code_line(rng: random.Random) -> str:
    randint = rng.randint
    f = _FUNCS[randint(0, len(_FUNCS) - 1)]
    a = _IDENTS[randint(0, len(_IDENTS) - 1)]
    b = _IDENTS[randint(0, len(_IDENTS) - 1)]
    indent = "    " * randint(0, 3)
    kind = randint(0, 7)
    if kind == 0:
        return f"def {f}({a}, {b}=None):"
    if kind == 1:
        return f"{indent}for {a[:-1] or a} in {b}:"
    if kind == 2:
        return f"{indent}if {a} is None or len({b}) > {randint(1, 10_000)}:"
    if kind == 3:
        return f"{indent}return {f}({a}, {b})"
    if kind == 4:
        return f'{indent}log.info("{f} %s", {a})'
    return f"{indent}{a} = {f}({b}, limit={randint(1, 5000)})"


class TextSource:
    """Text of about a given size, and log-normal numbers, drawn with one generator's ``rng``.

    The three draws are closures over local names rather than methods: they run several times per
    record, and closures keep the generator as fast as the single-module version was."""

    __slots__ = ("lognorm", "prompt", "text")

    def __init__(self, pools: TextPools, rng: random.Random) -> None:
        sentences, avg, code_lines, normals = pools.sentences, pools.avg_sentence, pools.code_lines, pools.normals
        rand, randint, getrandbits = rng.random, rng.randint, rng.getrandbits
        n_sent, n_code = len(sentences), len(code_lines)
        max_k = (n_sent - 1) // MAX_STRIDE

        def lognorm(mu: float, sigma: float) -> float:
            return exp(mu + sigma * normals[getrandbits(NORMAL_BITS)])

        def text(nbytes: int) -> str:
            """Prose: a strided slice of the sentence pool, two random draws however long the text."""
            k = min(max_k, nbytes // avg + 1)
            stride = 1 + int(rand() * MAX_STRIDE)
            first = int(rand() * (n_sent - k * stride))
            return " ".join(sentences[first : first + k * stride : stride])

        def prompt(nbytes: int) -> str:
            """A user's prompt: prose, one in five times with a Python snippet and a closing sentence."""
            body = text(nbytes)
            if rand() < 0.2:
                k = randint(4, 40)
                first = int(rand() * (n_code - k * 7))
                code = "\n".join(code_lines[first : first + k * 7 : 7])
                return f"{body}\n\n```python\n{code}\n```\n\n{sentences[int(rand() * n_sent)]}"
            return body

        self.lognorm: Callable[[float, float], float] = lognorm
        self.text: Callable[[int], str] = text
        self.prompt: Callable[[int], str] = prompt
