"""The MLflow Model Registry: generators, classifiers, model cards and promotion gates."""
