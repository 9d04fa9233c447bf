"""battgen.predictors: trainable property predictors (formation energy, band gap, voltage ...)."""
