"""fer-tune: hyperparameter search for facial-expression recognition on FER2013, built on Ray Tune."""

__version__ = "0.1.0"
