"""The RELION External job programs: deeppicker_relion_pick (pick.py) and deeppicker_relion_train
(train.py), with what both share (job.py: arguments as RELION passes them, run.out / run.err, exit
markers, abort, progress)."""
