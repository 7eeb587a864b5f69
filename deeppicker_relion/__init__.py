"""DeepPicker for RELION and CryoSPARC: a fully automated CNN particle picker.

Coordinate convention (used everywhere in this package, in every file format it reads or writes):
particle centres in pixels of the ORIGINAL micrograph (as listed in the input STAR / as stored in
the MRC file), x = column, y = row, origin at the centre of the first pixel (0-based), as RELION
writes ``rlnCoordinateX`` / ``rlnCoordinateY``.

Layout (each sub-package's docstring lists its modules):

- ``picking/``: the picking pipeline (preprocess, score map, candidates, centring, figure of merit,
  size check, self-training);
- ``jobs/``: the job layer (pick, train and evaluate jobs, worker processes, shard merging, the
  visual report, CryoSPARC import);
- ``training/``: the training loop and labelled data sets (RELION, CryoSPARC, EMPIAR);
- ``simulation/``: the micrograph simulator (demo, tests, training recipe);
- ``io/``: file formats (MRC, STAR, coordinates, CryoSPARC ``.cs``, RELION nodes, atomic writes);
- ``cli/``: the ``deeppicker`` command, one module per subcommand;
- ``model.py`` (the network and weights files), ``metrics.py`` (picks against references),
  ``demo.py``, ``errors.py``.
"""

__version__ = "0.1.0"
