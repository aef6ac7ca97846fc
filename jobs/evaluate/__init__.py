"""Evaluation and audit reports: ``faceveil eval``, the in-job audit sampler, residual faces.

Flow of ``faceveil eval`` (``runner.run_eval``): load the labelled set (salted sample ids) ->
load detectors, attackers, landmarks, attribute probes (``models``) -> one pass over the
originals (faces, attacker embeddings aligned by their own landmarks) -> per method: build it
(``methods``: registry, eval-only ``identity``, the surrogate hook), anonymize the set with
``FaceAnonymizer``, re-embed the anonymized faces with the ORIGINAL's alignment -> figures
(``figures``, ``metrics``) -> ``report.write_eval_report`` (report.json, index.html, examples).
"""

from jobs.evaluate.audit import AuditSampler, merge
from jobs.evaluate.audit_report import write_report
from jobs.evaluate.cli import (
    add_audit_faces_command,
    add_audit_run_options,
    add_eval_command,
    audit_sampler_from_args,
)
from jobs.evaluate.config import EvalConfig, MethodSpec, parse_methods

__all__ = [
    "AuditSampler",
    "EvalConfig",
    "MethodSpec",
    "add_audit_faces_command",
    "add_audit_run_options",
    "add_eval_command",
    "audit_sampler_from_args",
    "merge",
    "parse_methods",
    "write_report",
]
