"""The ragged English texts the peer comparisons send (tools/loadtest.py,
tools/compare_flagembedding.py): 8-256 words drawn from a fixed list of common words, so they
are the same on every machine and for every system (no data set to download). 229 words,
most of them one token each, so a 256-word text is about 256 tokens."""

import random

WORDS = """
the of and to in is that it was for on are as with his they at be this from have or by one
had not but what all were when we there can an your which their said if do will each about
how up out them then she many some so these would other into has more her two like him see
time could no make than first been its who now people my made over did down only way find
use may water long little very after words called just where most know get through back
much before go good new write our used me man too any day same right look think also around
another came come work three word must because does part even place well such here take why
things help put years different away again off went old number great tell men say small
every found still between name should home big give air line set own under read last never
us left end along while might next sound below saw something thought both few those always
looked show large often together asked house world going want school important until form
food keep children feet land side without boy once animals life enough took sometimes four
head above kind began almost live page got earth need far hand high year mother light
""".split()
MIN_WORDS, MAX_WORDS = 8, 256


def ragged_text(rng):
    """One text of MIN_WORDS..MAX_WORDS words (uniform) drawn with `rng`."""
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(MIN_WORDS, MAX_WORDS)))
