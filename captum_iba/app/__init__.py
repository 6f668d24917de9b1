"""The application layer of ``captum-iba``: the commands' data, runs, evaluation and report."""
