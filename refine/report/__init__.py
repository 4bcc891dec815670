"""The run's ``report.html``: what each section says (``html``), the run as the report reads it
(``reading``), the columns it read and how (``columns``), its figures (``plots``), the HTML
frame (``page``), and the scores against true labels that the report and the bench share
(``metrics``).
"""
