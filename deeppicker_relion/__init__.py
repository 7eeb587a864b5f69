"""DeepPicker for RELION and CryoSPARC: a fully automated CNN particle picker.

Coordinate convention (used everywhere in this package, in every file format it reads or writes):
particle centres in pixels of the ORIGINAL micrograph (as listed in the input STAR / as stored in
the MRC file), x = column, y = row, origin at the centre of the first pixel (0-based), as RELION
writes ``rlnCoordinateX`` / ``rlnCoordinateY``.
"""

__version__ = "0.1.0"
