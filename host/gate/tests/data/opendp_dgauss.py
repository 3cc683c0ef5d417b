"""Reference draws of the discrete Gaussian from OpenDP, for kanon-gate's
sampler test (`dp::tests::the_sampler_agrees_with_opendps`).

Run with `pip install opendp==0.16.0`, then
`python3 opendp_dgauss.py > opendp_dgauss_sigma3.7.json`: 100 000 draws of
OpenDP's integer Gaussian mechanism at scale 3.7 on the value 0 (CKS20's
discrete Gaussian, OpenDP's own sampler and generator), as a histogram.
"""
import json
from collections import Counter

import opendp.prelude as dp

dp.enable_features("contrib")
SCALE = 3.7
DRAWS = 100_000
mechanism = dp.m.make_gaussian(dp.atom_domain(T=int), dp.absolute_distance(T=int), scale=SCALE)
counts = Counter(mechanism(0) for _ in range(DRAWS))
print(json.dumps({
    "source": "opendp 0.16.0 make_gaussian(atom_domain(T=int), absolute_distance(T=int), scale=3.7) on 0",
    "scale": SCALE,
    "draws": DRAWS,
    "histogram": {str(k): counts[k] for k in sorted(counts)},
}, indent=1))
