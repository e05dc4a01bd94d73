"""mlipspace: open up universal machine-learning interatomic potentials and compare their latent spaces.

Data flows one way: structures (:mod:`mlipspace.data`) -> per-atom features (:mod:`mlipspace.models`,
stored by :mod:`mlipspace.store`) -> structure features (:mod:`mlipspace.aggregate`) -> comparisons
(:mod:`mlipspace.metrics`, :mod:`mlipspace.experiments`) -> report (:mod:`mlipspace.report`).
"""

__version__ = "0.1.0"
