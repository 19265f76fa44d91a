"""Operations: dead letters, redrive, heal, reconcile, retain, status."""
