"""Grids of runs (datasets x configurations x architectures x losses x hyper-parameters x folds x seeds).

``spec`` reads what a person asks for and expands it into runs, ``store`` keeps one record per run,
``executors`` is the table of ways to run them (``local``, ``inline``, ``submitit_local``; the
``slurm`` executor plugs in the same way), ``worker`` runs one run, ``runner`` ties these
together, ``status`` shows where a grid stands.
"""
