"""The token-length defaults that conversion and training share (no heavy imports: the CLI reads them)."""

from __future__ import annotations

DEFAULT_MAX_LEN = 2048
"""`--max-len` of `ft submit convert` and `ft submit train` alike, so that a conversion primed with the
defaults is the one a default training job uses. The fault reports run to 3,408 SmolLM2 tokens (p90 960)."""
SOURCE_SHARE = 0.75
"""By default prompts keep their first 3/4 of --max-len (1536 of 2048, the quality runs' setting), so
the answer always has room: 1536 + the answer keeps all but 11 of the 1,441 fault-report rows whole."""


def default_max_source_len(max_len: int) -> int:
    """The prompt budget when --max-source-len is not given: 3/4 of --max-len (at least 1)."""
    return max(1, int(max_len * SOURCE_SHARE))
