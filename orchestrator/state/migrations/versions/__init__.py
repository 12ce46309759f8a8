"""Migration revisions, one file per revision, named ``<rev-id>_<slug>.py``."""
