"""Seeded mutations of real YAML files, for the configuration-loader fuzz test.

Each mutation takes the source bytes and a ``random.Random`` and returns new bytes: byte flips,
truncation, alias bombs, deep nesting (block and flow), huge scalars, duplicate keys, tabs,
invalid UTF-8, anchors to themselves, wrong types, bad scalars, unknown tags and stray tokens.
:func:`mutated_corpus` writes ``count`` files, cycling over the sources and the mutations.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

Mutation = Callable[[bytes, random.Random], bytes]


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


def _join(lines: list[bytes]) -> bytes:
    return b"\n".join(lines)


def _value_lines(lines: list[bytes]) -> list[int]:
    """Indices of ``key: value`` lines (a value to replace)."""
    out = [
        i for i, line in enumerate(lines) if b": " in line and not line.lstrip().startswith(b"#")
    ]
    return out or [0]


def _replace_value(data: bytes, rng: random.Random, value: bytes) -> bytes:
    lines = _lines(data)
    index = rng.choice(_value_lines(lines))
    key = lines[index].split(b": ", 1)[0]
    lines[index] = key + b": " + value
    return _join(lines)


def byte_flips(data: bytes, rng: random.Random) -> bytes:
    buf = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        if buf:
            buf[rng.randrange(len(buf))] = rng.randrange(256)
    return bytes(buf)


def truncate(data: bytes, rng: random.Random) -> bytes:
    return data[: rng.randrange(max(1, len(data)))]


def billion_laughs(data: bytes, rng: random.Random) -> bytes:
    """The classic 9×9 alias bomb (~700 bytes) prepended, referenced from a real key."""
    levels = [b'lol0: &l0 ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for n in range(1, rng.randint(7, 10)):
        refs = b",".join(b"*l%d" % (n - 1) for _ in range(9))
        levels.append(b"lol%d: &l%d [%s]" % (n, n, refs))
    top = len(levels) - 1
    return _replace_value(_join([*levels, data]), rng, b"*l%d" % top)


def merge_bomb(data: bytes, rng: random.Random) -> bytes:
    """Nested mappings of aliases (a bomb through mappings and ``<<`` merge keys)."""
    levels = [b"m0: &m0 {a: 1, b: 2, c: 3, d: 4, e: 5, f: 6, g: 7, h: 8}"]
    for n in range(1, 9):
        keys = b", ".join(b"k%d: *m%d" % (i, n - 1) for i in range(8))
        levels.append(b"m%d: &m%d {<<: *m%d, %s}" % (n, n, n - 1, keys))
    return _join([*levels, data])


def deep_flow(data: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([40, 1_000, 20_000])
    return _replace_value(data, rng, b"[" * depth + b"1" + b"]" * depth)


def deep_block(data: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([40, 300, 1_200])
    nested = b"\n".join(b" " * (i + 1) + b"k%d:" % i for i in range(depth)) + b" 1"
    return data + b"\nnest:\n" + nested + b"\n"


def deep_sequence(data: bytes, rng: random.Random) -> bytes:
    depth = rng.choice([50, 2_000])
    return data + b"\nseq:\n" + b"- " * depth + b"x\n"


def huge_scalar(data: bytes, rng: random.Random) -> bytes:
    size = rng.choice([100_000, 900_000, 2_000_000])
    return _replace_value(data, rng, b"x" * size)


def huge_int(data: bytes, rng: random.Random) -> bytes:
    return _replace_value(data, rng, b"9" * rng.choice([5_000, 50_000]))


def duplicate_key(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    index = rng.choice(_value_lines(lines))
    lines.insert(index + 1, lines[index])
    return _join(lines)


def tabs(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(lines))
        lines[i] = b"\t" + lines[i].lstrip(b" ")
    return _join(lines)


def invalid_utf8(data: bytes, rng: random.Random) -> bytes:
    junk = rng.choice([b"\xff\xfe", b"\xc3(", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\x80"])
    at = rng.randrange(len(data) + 1)
    return data[:at] + junk + data[at:]


def control_chars(data: bytes, rng: random.Random) -> bytes:
    at = rng.randrange(len(data) + 1)
    return (
        data[:at] + rng.choice([b"\x00", b"\x01", b"\x1b[2J", b"\x7f", b"\xef\xbf\xbe"]) + data[at:]
    )


def self_anchor(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice([b"&s [*s]", b"&s {k: *s}", b"&s [1, [2, *s]]", b"*nowhere", b"&s *s"])
    return _replace_value(data, rng, value)


def wrong_type(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice(
        [b"[1, 2, 3]", b"{a: b}", b"null", b"~", b"-1e999", b".nan", b"!!binary AAA"]
    )
    return _replace_value(data, rng, value)


def bad_scalar(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice(
        [b"2001-02-30", b"!!timestamp junk", b"!!int x", b"!!float y", b"0x_", b"!!binary $$"]
    )
    return _replace_value(data, rng, value)


def unknown_tag(data: bytes, rng: random.Random) -> bytes:
    value = rng.choice([b"!!python/object/apply:os.system ['true']", b"!custom 1", b"!!set {a}"])
    return _replace_value(data, rng, value)


def stray_tokens(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    for _ in range(rng.randint(1, 3)):
        i = rng.randrange(len(lines))
        token = rng.choice([b"&", b"*", b"!", b"? ", b"|", b">", b"{", b"[", b"%YAML 9.9", b"---"])
        lines[i] = token + lines[i]
    return _join(lines)


def structure(data: bytes, rng: random.Random) -> bytes:
    lines = _lines(data)
    choice = rng.randrange(4)
    if choice == 0 and len(lines) > 2:  # swap two lines
        a, b = rng.sample(range(len(lines)), 2)
        lines[a], lines[b] = lines[b], lines[a]
    elif choice == 1 and lines:  # delete some lines
        start = rng.randrange(len(lines))
        del lines[start : start + rng.randint(1, 5)]
    elif choice == 2:  # multi-document
        lines += [b"---", b"other: 1"]
    else:  # non-scalar key, merge of a scalar
        lines += [rng.choice([b"? [a, b]\n: c", b"<<: 1", b"? {a: 1}\n: 2", b"<<: [1, 2]"])]
    return _join(lines)


def encoding(data: bytes, rng: random.Random) -> bytes:
    choice = rng.randrange(4)
    if choice == 0:
        return b"\xef\xbb\xbf" + data  # UTF-8 BOM
    if choice == 1:
        return data.replace(b"\n", b"\r\n")
    if choice == 2:
        return data.decode("utf-8", "replace").encode("utf-16")
    return b""


MUTATIONS: tuple[Mutation, ...] = (
    byte_flips,
    truncate,
    billion_laughs,
    merge_bomb,
    deep_flow,
    deep_block,
    deep_sequence,
    huge_scalar,
    huge_int,
    duplicate_key,
    tabs,
    invalid_utf8,
    control_chars,
    self_anchor,
    wrong_type,
    bad_scalar,
    unknown_tag,
    stray_tokens,
    structure,
    encoding,
)


@dataclass(frozen=True)
class Mutant:
    """One mutated file: where it is, what it came from and what was done to it."""

    path: Path
    source: Path
    mutation: str
    seed: int


def mutated_corpus(sources: list[Path], out: Path, count: int, seed: int = 14) -> list[Mutant]:
    """``count`` mutated files under ``out``, each from one source and one seeded mutation."""
    out.mkdir(parents=True, exist_ok=True)
    originals = [p.read_bytes() for p in sources]
    mutants: list[Mutant] = []
    for i in range(count):
        k = i % len(sources)
        mutation = MUTATIONS[(i // len(sources) + i) % len(MUTATIONS)]
        rng = random.Random(seed * 100_003 + i)
        data = mutation(originals[k], rng)
        path = out / f"{i:04d}-{mutation.__name__}-{sources[k].name}"
        path.write_bytes(data)
        mutants.append(Mutant(path, sources[k], mutation.__name__, seed * 100_003 + i))
    return mutants
