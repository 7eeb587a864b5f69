"""The sections of the accuracy benchmark, one module per question; benchmarks/accuracy.py runs
them (its SECTIONS table maps each ``--only`` name to ``module:function``). Each section function
is called as ``function(results, args)``: ``results`` is the dict written to accuracy.json, ``args``
the driver's parsed options (``args.allow_train``, ``args.finetune_targets``, ...). Import with
benchmarks/ on sys.path (the driver's folder), e.g. ``import sections.lomo``."""
