"""Reading and writing tables: the input in any form users hold it (``read``), verified labels
(``verify``), annotators' votes (``votes``), the key that names each row (``keys``), what each
row was decided (``decisions``), a new batch's columns cast to a run's types (``conform``), the
run's files written atomically (``write``), a run directory's files checked (``rundir``),
DuckDB over them (``query``) and a run's rows as one file for the next training job
(``export``). Nothing here knows about models.
"""
