"""Transfer learning on prep output: input pipeline, model, train, tune, evaluate, submit."""
