"""Small helpers that keep messages grammatical ("an object", "1 run")."""

from __future__ import annotations

# Words starting with a vowel letter but a consonant sound ("a uuid", "a unicode").
_CONSONANT_SOUND = ("uu", "uni", "use", "usu", "uti", "one")


def with_article(noun: str) -> str:
    """``noun`` with its indefinite article: ``a str``, ``an int``, ``an object``."""
    lowered = noun.lower()
    vowel_sound = lowered[:1] in ("a", "e", "i", "o", "u") and not lowered.startswith(
        _CONSONANT_SOUND
    )
    return f"{'an' if vowel_sound else 'a'} {noun}"


def count(number: int, singular: str, plural: str | None = None) -> str:
    """``1 run``, ``2 runs`` (``plural`` for irregular nouns)."""
    return f"{number} {singular if number == 1 else (plural or singular + 's')}"
