"""``captum-iba evaluate`` and ``demo``: the paper's evaluation, from maps to the written report.

The modules in the order the work flows:

1. :mod:`.evaluation` -- pairs to explain, every method's maps, every metric;
2. :mod:`.studies` (over :mod:`._study`) -- the paper's studies on held-out images;
3. :mod:`.sweep` -- the layer sweep (where the bottleneck goes);
4. :mod:`.cue` -- the cue study (a ground truth of what the model uses);
5. :mod:`.redundant` -- the redundant-evidence study (a ground truth of sufficient against all
   evidence);
6. :mod:`.vit` -- the ViT study (the token layout beside the DenseNets);
7. :mod:`.claims` -- the paper's claims judged against :mod:`.paper`'s published numbers;
8. :mod:`.render` -- ``report.md``, its figures, ``results.json`` and the CSV tables.
"""

from .render import run_report

__all__ = ["run_report"]
