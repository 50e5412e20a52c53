"""Reader studies: blinded real-vs-synthetic judgements by experts, tied to a generator version.

* :mod:`~training.studies.create` — the frozen image set (reals from a catalog selection, fakes
  with recorded seeds), opaque ids, the ``--require-disjoint`` check;
* :mod:`~training.studies.images` — the one re-encoding every served image gets;
* :mod:`~training.studies.store` — the S3 layout; one write-once object per (reader, image);
* :mod:`~training.studies.reading` — a reader's order, clock and answers (stateless);
* :mod:`~training.studies.stats` — accuracy, sensitivity, specificity, balanced accuracy with a
  bootstrap CI, binomial test, Fleiss' and Cohen's κ, fooling rates, accuracy vs time;
* :mod:`~training.studies.results` / :mod:`~training.studies.tracking` /
  :mod:`~training.studies.card` — closing, MLflow, the model card's "Reader study" section.

The HTTP routes and pages are :mod:`services.serving.studies`; the CLI is ``synthray study``.
"""
