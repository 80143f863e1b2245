"""QuartzNet training: config, data pipeline, augmentation, optimiser, schedule and the Ray Train loop."""
