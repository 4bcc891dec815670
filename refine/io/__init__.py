"""Reading and writing tables: the input table and its checks (``read``), verified labels
(``verify``), what each row was decided (``decisions``), the run's files written atomically
(``write``) and DuckDB over them (``query``). Nothing here knows about models.
"""
