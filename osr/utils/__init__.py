"""Plumbing: config resolvers, errors, atomic files, checkpoints, DDP gathering, loggers."""
