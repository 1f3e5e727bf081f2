"""Training (`cnndsl train`): data, augmentation, optimizers, the loop and checkpoints.

    from cnndsl.training.loop import TrainOptions, train
    result = train(cnndsl.load("examples/lenet5.cnn"), TrainOptions(backend="numpy", epochs=15))

Importing this package imports neither torch nor scikit-learn; see docs/training.md.
"""
