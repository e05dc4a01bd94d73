"""mlipspace: open up universal machine-learning interatomic potentials and compare their latent spaces.

Data flows one way: structures (:mod:`mlipspace.data`) -> per-atom features (:mod:`mlipspace.models`,
stored by :mod:`mlipspace.store`) -> structure features (:mod:`mlipspace.aggregate`) -> comparisons
(:mod:`mlipspace.metrics`, :mod:`mlipspace.experiments`) -> report (:mod:`mlipspace.report`).

``mlipspace.Results.load(OUT)`` reads a run's results for analysis in pandas (imported on first use,
so ``import mlipspace`` stays light).
"""

__version__ = "0.1.0"
__all__ = ["Results", "__version__"]


def __getattr__(name: str):
    if name == "Results":
        from mlipspace.report.results import Results

        return Results
    raise AttributeError(f"module 'mlipspace' has no attribute {name!r}")
