"""The end-to-end site's fixtures, defined once for every module that uses them: a fixture
imported into several test modules would be set up once per module (two sites at once)."""

from tests.integration.site_fixtures import e2e_site, slurm_flavor, system_fsub

__all__ = ["e2e_site", "slurm_flavor", "system_fsub"]
