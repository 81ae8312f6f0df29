"""Every spelling an application uses for a table, as one whole-word search pattern.

``credit_allocations`` is also ``creditAllocation``, ``CreditAllocationTransaction``,
``/credit-allocations`` in code; each spelling is matched as a whole word, so ``credit_allocation_id``
and ``creditAllocationId`` are not hits. The pattern is ripgrep's (Rust) regex syntax.

The spellings carry their case, except the table's own (lowercase) name: PostgreSQL folds an unquoted
identifier, so ``FROM Credit_Allocations`` in a query is the table too. A quoted ``"Credit_Allocations"``
is another table: ``is_other_quoted_table`` tells the scan to drop such a hit.
"""

from __future__ import annotations

from collections.abc import Iterable

from safedrop.migration import TableName


def _singular(word: str) -> str:
    if word.endswith("ies") and len(word) > 3:
        return word[:-3] + "y"
    if word.endswith("sses"):
        return word[:-2]
    if word.endswith(("xes", "ches", "shes")):
        return word[:-2]
    if word.endswith("s") and not word.endswith(("ss", "us", "is")):
        return word[:-1]
    return word


def _plural(word: str) -> str:
    if word.endswith("y") and len(word) > 1 and word[-2] not in "aeiou":
        return word[:-1] + "ies"
    if word.endswith(("s", "x", "z", "ch", "sh")):
        return word + "es"
    return word + "s"


def _spellings(words: list[str]) -> list[str]:
    lower = [w.lower() for w in words]
    pascal = "".join(w[:1].upper() + w[1:] for w in lower)
    camel = lower[0] + pascal[len(lower[0]) :]
    return ["_".join(lower), camel, pascal, "-".join(lower)]


def identifier_variants(table: str) -> list[str]:
    """Every spelling of a table name the code may use: singular and plural, in snake_case, camelCase,
    PascalCase and kebab-case. Only the last word changes number. Longest first, no repeats.

    >>> identifier_variants("credit_allocations")[:3]
    ['credit_allocations', 'credit-allocations', 'credit_allocation']
    """
    words = [w for w in table.split("_") if w] or [table]
    last = words[-1]
    singular = _singular(last)
    if singular != last:
        plural_words, singular_words = words, [*words[:-1], singular]
    else:
        plural_words, singular_words = [*words[:-1], _plural(last)], words
    plural_forms, singular_forms = _spellings(plural_words), _spellings(singular_words)
    candidates = [table]
    for p, s in zip(plural_forms, singular_forms, strict=True):
        candidates += [p, s]
    unique = list(dict.fromkeys(candidates))
    return sorted(unique, key=len, reverse=True)  # stable: ties keep snake, camel, Pascal, kebab order


_RUST_META = set("\\.+*?()|[]{}^$#&-~")


def _rust_escape(text: str) -> str:
    """Escape for Rust's regex syntax (ripgrep), which is not Python's ``re.escape``."""
    return "".join("\\" + c if c in _RUST_META else c for c in text)


def _folds(name: str) -> bool:
    """Whether PostgreSQL reads ``name`` unquoted in any case as this table: a lowercase ASCII name."""
    return name == name.lower() and name.isascii() and any(c.isalpha() for c in name)


def search_pattern(targets: Iterable[TableName]) -> str:
    """One regex for all targets: every variant as a whole word, longest first; the table's own name in
    any case (``(?i:…)``) when PostgreSQL folds it."""
    variants: dict[str, str] = {}
    for target in targets:
        for variant in identifier_variants(target.name):
            variants.setdefault(variant, _rust_escape(variant))
        if _folds(target.name):
            variants[target.name] = f"(?i:{_rust_escape(target.name)})"
    ordered = sorted(variants, key=len, reverse=True)
    return r"\b(?:" + "|".join(variants[v] for v in ordered) + r")\b"


def exact_spellings(targets: Iterable[TableName]) -> set[str]:
    """Every spelling the pattern matches with its case as written (the rest are case-folded names)."""
    return {v for target in targets for v in identifier_variants(target.name)}


def is_other_quoted_table(line: str, start: int, match: str, exact: set[str]) -> bool:
    """A hit in another case that stands in double quotes, ``"Credit_Allocations"``: a quoted identifier,
    so another table than ``credit_allocations`` (``start`` counts characters)."""
    if match in exact:
        return False
    end = start + len(match)
    return start > 0 and line[start - 1 : start] == '"' and line[end : end + 1] == '"'


# --------------------------------------------------------------------------------------------------
# running ripgrep
