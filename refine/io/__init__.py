"""Reading and writing tables: the input table and its checks (``read``), verified labels
(``verify``), what each row was decided (``decisions``), a new batch's columns cast to a run's
types (``conform``), the run's files written atomically (``write``) and DuckDB over them
(``query``). Nothing here knows about models.
"""
