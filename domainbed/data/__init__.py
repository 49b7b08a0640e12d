"""Loaders: infinite per-domain training streams and one-pass evaluation loaders."""

from domainbed.data.loaders import InfiniteDataLoader, eval_loader, num_workers_for

__all__ = ["InfiniteDataLoader", "eval_loader", "num_workers_for"]
