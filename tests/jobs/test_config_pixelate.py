"""Pixelate's default is 3 cells across (issue 13: the worst attack on lfw_dev scored 4.5% with
8 cells, 2.5% with 3), and a job records the cells it drew with, so that a --resume never mixes
mosaics of two sizes in one dataset."""

from dataclasses import replace

from faceveil.anon_core.methods import create
from faceveil.anon_core.methods.baselines import PIXELATE_BLOCKS
from faceveil.anon_core.pipeline import AnonConfig
from faceveil.jobs.config import JobConfig


def _job(tmp_path, **options) -> JobConfig:
    anon = AnonConfig(method="pixelate", method_options=options)
    return JobConfig(str(tmp_path / "in"), str(tmp_path / "out"), anon=anon)


def test_the_default_mosaic_has_three_cells_across_the_face():
    plan = create("pixelate").plan(160, 120)  # a region 120 wide, 160 high
    assert (plan.width, plan.height) == (2, 3)
    assert create("pixelate", blocks=8).plan(160, 120).height == 8


def test_a_job_records_the_cells_it_draws_with(tmp_path):
    assert _job(tmp_path).output_config()["anon"]["method_options"] == {"blocks": 3}
    assert _job(tmp_path, blocks=8).output_config()["anon"]["method_options"] == {"blocks": 8}


def _earlier(config: JobConfig) -> dict:
    """job.json's config as a job written before pixelate's cells were recorded holds it."""
    earlier = config.output_config()
    del earlier["anon"]["method_options"]["blocks"]
    return {"config": earlier, "config_sha256": "0" * 64}


def test_a_pixelate_job_of_the_earlier_default_is_not_resumed(tmp_path):
    """A job.json written before (no ``blocks``: its shards have 8 cells) is refused with the
    reason; the same job written now resumes; a blur job gets the general refusal."""
    config = _job(tmp_path)
    refusal = config.resume_refusal(_earlier(config))
    assert refusal is not None and "8 cells" in refusal and f"draws {PIXELATE_BLOCKS}" in refusal
    now = {"config": config.output_config(), "config_sha256": config.output_config_sha256()}
    assert config.resume_refusal(now) is None
    blur = _earlier(config)
    blur["config"]["anon"]["method"] = "blur"
    other = config.resume_refusal(blur)
    assert other is not None and "another config" in other


def test_an_earlier_pixelate_job_resumes_with_its_own_cells_and_nothing_else(tmp_path):
    """Asked for 8 cells, the earlier job's output is what this config draws: it resumes. With
    another detector as well, the general refusal names what to keep the same."""
    earlier = _earlier(_job(tmp_path))
    assert _job(tmp_path, blocks=8).resume_refusal(earlier) is None
    other = _job(tmp_path, blocks=8)
    other = replace(other, anon=replace(other.anon, detector="scrfd"))
    refusal = other.resume_refusal(earlier)
    assert refusal is not None and "another config" in refusal
