"""What the suite promises when it compares floats, in one place.

Bitwise equality holds for what is stored and read back (weights, ids, bytes) and for counter-based noise, whose
bits depend only on its key. Any other float result computed twice, by two objects, in two runs or on two CPUs,
may differ by kernel rounding: a float kernel can take another code path for another memory layout, thread
count or instruction set (seen: 5.2e-6 between a model and its reloaded copy on an AMD EPYC, with bitwise equal
weights). Such comparisons use the tolerances below, which sit orders of magnitude under any real change.
"""

# One computation done twice (a forward pass, DDIM sampling over a few steps): values of order 1.
RECOMPUTED = dict(rtol=1e-5, atol=1e-5)

# One short training run done twice (a handful of optimizer steps), compared weight by weight.
RETRAINED = dict(rtol=1e-4, atol=1e-6)
