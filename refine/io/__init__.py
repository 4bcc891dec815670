"""Reading and writing tables: the input table and its checks (``read``), verified labels
(``verify``), what each row was decided (``decisions``), a new batch's columns cast to a run's
types (``conform``), the run's files written atomically (``write``), DuckDB over them
(``query``) and a run's rows as one file for the next training job (``export``). Nothing here
knows about models.
"""
