"""Training and scoring: the MLP (``model``), cross-fitting it so every row gets out-of-fold
probabilities (``crossfit``), saving and resuming folds and rounds (``checkpoint``), temperature
scaling (``calibrate``), synthetic rows (``augment``) and the distilled student (``distill``).
"""
