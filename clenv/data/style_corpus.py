"""The sentence corpus of the text style-shift stream (:mod:`clenv.envs.style_shift`, FTN Experiment 2).

120 short mixed-case English sentences written for clenv: English proverbs and two perfect pangrams ("Cwm fjordbank
glyphs vext quiz", "Jumbling vext frowzy hacks PDQ"). Plain ASCII, single spaces, no leading or trailing space, at
least two words each, at most 30 characters each.

Why 30: the stream's samples are byte-level, ``[BOS] source [SEP] target [EOS]`` in ``max_length = 96`` tokens, and
the longest target is ``double_words`` (each word twice: ``2 * len(source) + 1`` bytes), so a source of n characters
needs ``3n + 4`` tokens; n <= 30 fits 96. Longer pangrams (the quick brown fox, 43 characters) would not fit.

The split is fixed and part of the benchmark: :data:`TRAIN` is the first 100 sentences (the training batches and the
support batches are drawn from them), :data:`TEST` the last 20 (held out: the ``test`` split, never trained on).
"""

from __future__ import annotations

__all__ = ["SENTENCES", "TRAIN", "TEST", "NUM_TRAIN"]

#: Every sentence, in the fixed order the split refers to.
SENTENCES: tuple[str, ...] = (
    'Cwm fjordbank glyphs vext quiz',
    'Haste makes waste.',
    'Better late than never.',
    'Practice makes perfect.',
    'Time is money.',
    'Knowledge is power.',
    'Look before you leap.',
    'All that glitters is not gold.',
    'Honesty is the best policy.',
    'Two heads are better than one.',
    'When in Rome, do as Romans do.',
    'Rome was not built in a day.',
    'No pain, no gain.',
    'Easy come, easy go.',
    'First come, first served.',
    'Seeing is believing.',
    'Silence is golden.',
    'Less is more.',
    'Out of sight, out of mind.',
    'Let sleeping dogs lie.',
    'A stitch in time saves nine.',
    'Still waters run deep.',
    'Curiosity killed the cat.',
    'The early bird gets the worm.',
    'Fortune favours the bold.',
    'Great minds think alike.',
    'Laughter is the best medicine.',
    'Money does not grow on trees.',
    'Old habits die hard.',
    'Slow and steady wins the race.',
    'No smoke without fire.',
    'Barking dogs seldom bite.',
    'Blood is thicker than water.',
    'Charity begins at home.',
    "Don't cry over spilt milk.",
    'Every dog has its day.',
    'Familiarity breeds contempt.',
    'Forewarned is forearmed.',
    'Hope for the best.',
    'If the shoe fits, wear it.',
    'It takes two to tango.',
    'Lightning never strikes twice.',
    'Make hay while the sun shines.',
    'Never say never.',
    'Patience is a virtue.',
    'Strike while the iron is hot.',
    'The customer is always right.',
    'There is no place like home.',
    'Variety is the spice of life.',
    'You reap what you sow.',
    "Beggars can't be choosers.",
    'Ignorance is bliss.',
    'Money talks.',
    'Opposites attract.',
    'Practice what you preach.',
    'Rules are made to be broken.',
    'The more, the merrier.',
    'Time flies like an arrow.',
    'Waste not, want not.',
    'What goes around comes around.',
    'Home is where the heart is.',
    'Misery loves company.',
    'Mighty oaks from acorns grow.',
    'Walls have ears.',
    'Better safe than sorry.',
    'Enough is as good as a feast.',
    'Every little helps.',
    'Fools rush in.',
    'Hunger is the best sauce.',
    'It never rains but it pours.',
    'Love is blind.',
    'Many hands make light work.',
    'Once bitten, twice shy.',
    'Talk is cheap.',
    'Truth will out.',
    "Two wrongs don't make a right.",
    'All roads lead to Rome.',
    'Every rose has its thorn.',
    'The grass is always greener.',
    'Necessity knows no law.',
    'Tomorrow is another day.',
    'Dead men tell no tales.',
    "Don't count your chickens.",
    'Fight fire with fire.',
    'Clothes make the man.',
    'Hope springs eternal.',
    'Live and let live.',
    'Like father, like son.',
    'No news is good news.',
    'Speak of the devil.',
    'Kill two birds with one stone.',
    'Bad news travels fast.',
    'East or West, home is best.',
    'Jack of all trades.',
    'The devil is in the details.',
    'Let bygones be bygones.',
    'Every man has his price.',
    'Might makes right.',
    'Forgive and forget.',
    'Easier said than done.',
    'Jumbling vext frowzy hacks PDQ',
    'The end justifies the means.',
    'Old friends are best.',
    'To err is human.',
    'Wonders never cease.',
    'Ask and you shall receive.',
    'Brevity is the soul of wit.',
    'Every Jack has his Jill.',
    'Big fish eat little fish.',
    'Nobody is perfect.',
    'Hard work pays off.',
    'You win some, you lose some.',
    'The truth hurts.',
    'Third time lucky.',
    'A watched pot never boils.',
    'Cream rises to the top.',
    'Youth is wasted on the young.',
    'Misfortunes never come singly.',
    'Finders keepers.',
    'Out of the frying pan.',
)

#: How many of :data:`SENTENCES`, from the start, are training sentences.
NUM_TRAIN = 100

#: The training sentences: ``SENTENCES[:100]``.
TRAIN: tuple[str, ...] = SENTENCES[:NUM_TRAIN]

#: The held-out sentences: ``SENTENCES[100:]`` (20).
TEST: tuple[str, ...] = SENTENCES[NUM_TRAIN:]
