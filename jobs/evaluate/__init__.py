"""``faceveil eval``: privacy, utility, recall and throughput of anonymization methods, in-process.

Needs ``anon_core`` only; nothing in the job imports it (the in-job privacy sample is
``jobs.privacy_sample``, the residual-face check ``jobs.residual``).

Flow of ``faceveil eval`` (``runner.run_eval``): load the labelled set (salted sample ids) ->
load detectors, attackers, landmarks, attribute probes (``models``) -> one pass over the
originals (faces, attacker embeddings aligned by their own landmarks) -> per method: build it
(``methods``: registry, eval-only ``identity``, the surrogate hook), anonymize the set with
``FaceAnonymizer``, re-embed the anonymized faces with the ORIGINAL's alignment -> attacks on
those features (``attacks``: aligned, parrot and inversion on one disjoint identity split, heads
in ``heads``; worst case per method) and figures (``figures``, ``metrics``) -> recall per group
and on small faces (``recall``) -> ``report.write_eval_report`` (report.json, index.html,
examples).
"""

from faceveil.jobs.evaluate.cli import add_eval_command
from faceveil.jobs.evaluate.config import EvalConfig, MethodSpec, parse_methods

__all__ = ["EvalConfig", "MethodSpec", "add_eval_command", "parse_methods"]
