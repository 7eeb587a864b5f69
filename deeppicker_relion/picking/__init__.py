"""The picking pipeline, one stage per module: ``preprocess`` (resample so the box spans 64 px,
normalise), ``scoring`` (the score map), ``candidates`` (clean, find peaks, filter, sort,
threshold), ``centring`` (the centring network), ``fom`` (the figure of merit), ``pipeline`` (the
stages for one micrograph, with read-ahead), ``sizecheck`` (does the model find the particles at the
size given?) and ``selftrain`` (fine-tuning on the target's own best picks)."""
