"""Training the classifier: ``train`` (patches and the training loop), ``datasets`` (labelled data
sets from solved projects: RELION particles STARs, coordinate nodes, CryoSPARC .cs, EMPIAR entries)
and ``empiar`` (downloads into a local cache)."""
